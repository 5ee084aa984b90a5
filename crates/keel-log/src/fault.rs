//! Fault points at the log's I/O boundaries, for tests and `keel serve --fault-injection`.
//!
//! With the `fault-injection` feature, tests can make every fsync or every write fail
//! until the fault is cleared. Without it these are no-ops that the compiler removes.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};

    static FSYNC_FAILS: AtomicBool = AtomicBool::new(false);
    static WRITE_FAILS: AtomicBool = AtomicBool::new(false);

    /// Makes every fsync fail (with EIO) while `on`.
    pub fn set_fsync_fails(on: bool) {
        FSYNC_FAILS.store(on, Ordering::SeqCst);
    }

    /// Makes every write fail (with ENOSPC) while `on`.
    pub fn set_write_fails(on: bool) {
        WRITE_FAILS.store(on, Ordering::SeqCst);
    }

    pub fn fsync() -> std::io::Result<()> {
        if FSYNC_FAILS.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }

    pub fn write() -> std::io::Result<()> {
        if WRITE_FAILS.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{set_fsync_fails, set_write_fails};

#[cfg(feature = "fault-injection")]
pub use imp::{fsync, write};

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fsync() -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn write() -> std::io::Result<()> {
    Ok(())
}
