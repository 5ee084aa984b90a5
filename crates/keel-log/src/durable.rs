//! Making file creations, renames and removals survive power loss.
//!
//! fsync of a file makes its contents durable, not its name: a file created, renamed or
//! removed since its directory was last fsynced can, after power loss, be missing, keep
//! its old name, or reappear. Every such change in Keel's data directory goes through
//! here, which fsyncs the directory after it.

use std::io::Write;
use std::path::Path;

/// fsyncs the directory `dir`, making the names of the files in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    crate::fault::fsync()?;
    std::fs::File::open(dir)?.sync_all()?;
    crate::fault::dir_synced(dir);
    Ok(())
}

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces the file at `path` with `bytes` so that after a crash or power loss it holds
/// either the old contents or the new, never a mix or nothing: a temporary file written
/// and fsynced, renamed over `path`, then the directory fsynced.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        crate::fault::write()?;
        let mut f = std::fs::File::create(&tmp)?;
        crate::fault::created(&tmp);
        f.write_all(bytes)?;
        crate::fault::fsync()?;
        f.sync_all()?;
        crate::fault::synced(&tmp, bytes.len() as u64);
    }
    std::fs::rename(&tmp, path)?;
    crate::fault::renamed(&tmp, path);
    sync_dir(parent(path))
}

/// Removes the file at `path` durably (a missing file is not an error).
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            crate::fault::removed(path);
            sync_dir(parent(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replaced file holds the new contents and no temporary file is left beside it.
    #[test]
    fn replace_leaves_the_new_contents_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace_file(&path, b"one").unwrap();
        replace_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        remove_file(&path).unwrap();
        remove_file(&path).unwrap();
        assert!(!path.exists());
    }
}
