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

#[cfg(unix)]
fn is_locked(lock_file: &Path) -> Result<bool, SdfsError> {
    use std::os::fd::AsRawFd;
    let file = match std::fs::OpenOptions::new().read(true).open(lock_file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let fd = file.as_raw_fd();
    // SAFETY: flock on a file descriptor we own for the duration of the call; the lock (if
    // taken) is released right away and in any case when `file` is closed.
    let taken = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if taken {
        // SAFETY: as above.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return Ok(false);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::WouldBlock {
        Ok(true)
    } else {
        Err(err.into())
    }
}

#[cfg(not(unix))]
fn is_locked(_lock_file: &Path) -> Result<bool, SdfsError> {
    Ok(false)
}
