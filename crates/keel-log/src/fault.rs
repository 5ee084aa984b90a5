//! Fault points at the log's I/O boundaries, for tests and `keel serve --fault-injection`.
//!
//! With the `fault-injection` feature, tests can make every fsync or every write fail
//! until the fault is cleared, and can simulate a **power loss**: while tracking is on
//! ([`track_durability`]), every file Keel writes through keel-log records what of it is
//! durable (the length its last fsync covered, whether its directory entry was fsynced);
//! [`power_loss`] then throws away everything else under a directory, as a disk losing
//! power throws away what sat in the page cache: unsynced appends are cut off (optionally
//! leaving a torn part of them), and files whose names were never made durable vanish.
//! A file present when its store opened it counts as durable as it was found.
//!
//! What the model does not do: bring back a removed file whose removal was not yet
//! durable, or return a renamed-over file to its old contents (the new name is dropped
//! instead). Both only lose more than a real disk would.
//!
//! Without the feature these are no-ops that the compiler removes.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    static FSYNC_FAILS: AtomicBool = AtomicBool::new(false);
    static WRITE_FAILS: AtomicBool = AtomicBool::new(false);
    static FROZEN: AtomicBool = AtomicBool::new(false);
    static TRACKING: AtomicBool = AtomicBool::new(false);

    /// What of one file would survive a power loss now.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Durable {
        /// Bytes an fsync has covered.
        synced_len: u64,
        /// Whether the file's directory entry has been fsynced since it was created.
        named: bool,
    }

    static FILES: Mutex<Option<HashMap<PathBuf, Durable>>> = Mutex::new(None);

    fn files<R>(f: impl FnOnce(&mut HashMap<PathBuf, Durable>) -> R) -> Option<R> {
        if !TRACKING.load(Ordering::Acquire) {
            return None;
        }
        let mut g = FILES.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(g.get_or_insert_with(HashMap::new)))
    }

    /// Makes every fsync fail (with EIO) while `on`.
    pub fn set_fsync_fails(on: bool) {
        FSYNC_FAILS.store(on, Ordering::SeqCst);
    }

    /// Makes every write fail (with ENOSPC) while `on`.
    pub fn set_write_fails(on: bool) {
        WRITE_FAILS.store(on, Ordering::SeqCst);
    }

    /// Starts recording what is durable (see the module's documentation).
    pub fn track_durability(on: bool) {
        TRACKING.store(on, Ordering::Release);
    }

    pub fn fsync() -> std::io::Result<()> {
        if FSYNC_FAILS.load(Ordering::SeqCst) || FROZEN.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }

    pub fn write() -> std::io::Result<()> {
        if FROZEN.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        if WRITE_FAILS.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    }

    /// A store opened `path` and found `len` bytes: they survived whatever came before.
    pub fn opened(path: &Path, len: u64) {
        files(|m| {
            m.insert(
                path.to_path_buf(),
                Durable {
                    synced_len: len,
                    named: true,
                },
            );
        });
    }

    /// `path` was created: its name is not durable until its directory is fsynced.
    pub fn created(path: &Path) {
        files(|m| {
            m.insert(
                path.to_path_buf(),
                Durable {
                    synced_len: 0,
                    named: false,
                },
            );
        });
    }

    /// An fsync of `path` covered its first `len` bytes (a truncation to `len`, synced,
    /// also lands here).
    pub fn synced(path: &Path, len: u64) {
        files(|m| {
            m.entry(path.to_path_buf())
                .or_insert(Durable {
                    synced_len: 0,
                    named: true,
                })
                .synced_len = len;
        });
    }

    /// `from` was renamed to `to`: `to` holds what `from` held, under a name not yet
    /// durable.
    pub fn renamed(from: &Path, to: &Path) {
        files(|m| {
            let d = m.remove(from).unwrap_or(Durable {
                synced_len: 0,
                named: false,
            });
            m.insert(to.to_path_buf(), Durable { named: false, ..d });
        });
    }

    /// `path` was removed.
    pub fn removed(path: &Path) {
        files(|m| {
            m.remove(path);
        });
    }

    /// `dir` was fsynced: the names of the files in it are durable.
    pub fn dir_synced(dir: &Path) {
        files(|m| {
            for (p, d) in m.iter_mut() {
                if p.parent() == Some(dir) {
                    d.named = true;
                }
            }
        });
    }

    /// What a simulated power loss threw away.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct PowerLoss {
        /// Files whose names were not durable, removed.
        pub files_removed: usize,
        /// Files cut back to what was fsynced.
        pub files_cut: usize,
        /// Unsynced bytes discarded.
        pub bytes_lost: u64,
    }

    /// Stops every later write and fsync of this process (they fail with EIO): the moment
    /// the power goes. A process that calls it must not go on (it aborts, or its stores
    /// are dropped) before [`power_loss`] has run.
    pub fn freeze(on: bool) {
        FROZEN.store(on, Ordering::SeqCst);
    }

    /// Throws away everything under `root` that a power loss now would lose. With `tear`,
    /// a file cut back keeps a part of its unsynced tail (`tear` picks how many bytes from
    /// how many there are), as a write torn by the power going off mid-way would.
    pub fn power_loss(root: &Path, tear: Option<&mut dyn FnMut(u64) -> u64>) -> std::io::Result<PowerLoss> {
        let mut tear = tear;
        let victims: Vec<(PathBuf, Durable)> = files(|m| {
            let v: Vec<(PathBuf, Durable)> = m
                .iter()
                .filter(|(p, _)| p.starts_with(root))
                .map(|(p, d)| (p.clone(), *d))
                .collect();
            m.retain(|p, _| !p.starts_with(root));
            v
        })
        .unwrap_or_default();
        let mut out = PowerLoss::default();
        for (path, d) in victims {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if !d.named {
                std::fs::remove_file(&path)?;
                out.files_removed += 1;
                out.bytes_lost += meta.len();
                continue;
            }
            if meta.len() > d.synced_len {
                let unsynced = meta.len() - d.synced_len;
                let kept = tear.as_mut().map(|t| t(unsynced).min(unsynced)).unwrap_or(0);
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(d.synced_len + kept)?;
                f.sync_all()?;
                out.files_cut += 1;
                out.bytes_lost += unsynced - kept;
            }
        }
        Ok(out)
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{
    created, dir_synced, freeze, fsync, opened, power_loss, removed, renamed, set_fsync_fails, set_write_fails, synced,
    track_durability, write, PowerLoss,
};

#[cfg(not(feature = "fault-injection"))]
mod off {
    use std::path::Path;

    #[inline(always)]
    pub fn fsync() -> std::io::Result<()> {
        Ok(())
    }
    #[inline(always)]
    pub fn write() -> std::io::Result<()> {
        Ok(())
    }
    #[inline(always)]
    pub fn opened(_: &Path, _: u64) {}
    #[inline(always)]
    pub fn created(_: &Path) {}
    #[inline(always)]
    pub fn synced(_: &Path, _: u64) {}
    #[inline(always)]
    pub fn renamed(_: &Path, _: &Path) {}
    #[inline(always)]
    pub fn removed(_: &Path) {}
    #[inline(always)]
    pub fn dir_synced(_: &Path) {}
}

#[cfg(not(feature = "fault-injection"))]
pub use off::{created, dir_synced, fsync, opened, removed, renamed, synced, write};
