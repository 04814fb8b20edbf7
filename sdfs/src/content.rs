//! Content files: each upload's bytes, back to back, in `<data>/content/<upload id>` (16 hex
//! digits). A file is written once, fsynced before its blob is acknowledged, read with
//! positioned reads, and deleted with its blob. What the bytes mean (which blob, which
//! checksums) is recorded in sled by the blob store, not here.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// The folder, inside a node's data folder, that holds the content files.
pub const CONTENT_FOLDER: &str = "content";

/// The folder of content files.
#[derive(Debug, Clone)]
pub struct ContentDir {
    path: PathBuf,
}

impl ContentDir {
    /// Opens (creating it if needed) `data_dir/content`.
    pub fn open(data_dir: &Path) -> io::Result<ContentDir> {
        let path = data_dir.join(CONTENT_FOLDER);
        std::fs::create_dir_all(&path)?;
        Ok(ContentDir { path })
    }

    /// Where upload `upload`'s bytes are.
    pub fn path_of(&self, upload: u64) -> PathBuf {
        self.path.join(format!("{upload:016x}"))
    }

    /// Creates the (new, empty) file of an upload.
    pub fn create(&self, upload: u64) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path_of(upload))
    }

    /// Opens an upload's file for reading.
    pub fn open_file(&self, upload: u64) -> io::Result<File> {
        File::open(self.path_of(upload))
    }

    /// Deletes an upload's file; a file already gone is fine.
    pub fn remove(&self, upload: u64) -> io::Result<()> {
        match std::fs::remove_file(self.path_of(upload)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Makes the folder's entries (files created or deleted) durable.
    pub fn sync(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }

    /// The upload ids that have a file here (names that are not ids are skipped).
    pub fn uploads(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            let name = entry?.file_name();
            match name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                Some(id) if name.len() == 16 => out.push(id),
                _ => tracing::warn!(file = ?name, "unexpected file in the content folder"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_by_upload() {
        let dir = tempfile::tempdir().unwrap();
        let content = ContentDir::open(dir.path()).unwrap();
        drop(content.create(0x2a).unwrap());
        assert!(
            content.create(0x2a).is_err(),
            "an upload's file is created once"
        );
        assert_eq!(content.uploads().unwrap(), vec![0x2a]);
        assert!(content.path_of(0x2a).ends_with("content/000000000000002a"));
        content.remove(0x2a).unwrap();
        content.remove(0x2a).unwrap();
        assert!(content.uploads().unwrap().is_empty());
    }
}
