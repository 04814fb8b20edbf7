//! sled's lock on its database folder: sled `flock`s `<db>/db` while a database is open, and
//! its background threads let go of it shortly *after* the last handle is dropped. Opening
//! waits for that, and closing waits until it has happened, so a node restarted in the same
//! process finds its folder free.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::SdfsError;

/// Waits until nobody holds sled's lock on `lock_file` (sled `flock`s it while a database is
/// open; its background threads let go shortly after the last handle is dropped).
pub(crate) fn wait_until_unlocked(lock_file: &Path, timeout: Duration) -> Result<(), SdfsError> {
    let started = Instant::now();
    loop {
        if !is_locked(lock_file)? {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(SdfsError::Config(format!(
                "{} is still in use by another blob store (another node on the same data folder?)",
                lock_file.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether someone holds an exclusive lock on `lock_file` (the standard library's
/// `File::try_lock`, flock on Unix; stable since Rust 1.89, the workspace's minimum).
fn is_locked(lock_file: &Path) -> Result<bool, SdfsError> {
    let file = match std::fs::OpenOptions::new().read(true).open(lock_file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    match file.try_lock() {
        // Taken and, with `file` dropped, released at once.
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}
