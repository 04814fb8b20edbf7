//! The SDFS namespace in the replicated state: file names → versions (newest first, the last
//! K kept) → content-addressed blobs → replica sets, and the storage nodes with their liveness.
//!
//! A blob is shared by every version (of any name) with the same content; it is freed when no
//! version refers to it any more, and the freed blobs are returned so the leader can delete
//! their copies. Replica sets keep dead nodes: a node that comes back with its data counts
//! again, and the leader trims a set that ends up larger than wanted.

use std::collections::BTreeSet;

use idunno_api::file::{validate_path, FileInfo, FileVersion};
use idunno_api::Millis;
use serde::{Deserialize, Serialize};

use super::command::CommandError;
use super::{Key, State};

/// A file name and its versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub versions: Vec<VersionRecord>,
    /// The number the next version gets (versions are never reused).
    pub next_version: u64,
}

/// One version of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    pub hash: String,
    pub size: u64,
    pub created_at_ms: Millis,
}

/// A stored blob: its size, the replicas wanted, the nodes holding it, how many versions use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    pub hash: String,
    pub size: u64,
    /// Replication factor wanted.
    pub target: u32,
    pub replicas: BTreeSet<String>,
    pub refs: u32,
}

/// A storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub addr: String,
    pub alive: bool,
    /// When its liveness last changed.
    pub since_ms: Millis,
}

/// A new version of a file whose blob is already stored (flushed on `replicas`), as a command
/// that commits it alongside something else carries it (a completion with its results).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewVersion {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    pub size: u64,
    pub replicas: Vec<String>,
    /// Replication factor wanted for the blob.
    pub target: u32,
    /// Versions kept per name.
    pub keep: u32,
}

/// A blob no version refers to any more, and the nodes that hold copies to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreedBlob {
    pub hash: String,
    pub replicas: Vec<String>,
}

/// Checks a storage node id.
pub fn validate_node_id(id: &str) -> Result<(), CommandError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CommandError::Invalid(format!(
            "{id:?} is not a storage node id (1-64 of A-Z, a-z, 0-9, '-', '_')"
        )))
    }
}

/// Checks a content hash (BLAKE3, 64 lowercase hex digits).
pub fn validate_hash(hash: &str) -> Result<(), CommandError> {
    if hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(CommandError::Invalid(format!(
            "{hash:?} is not a BLAKE3 hex digest"
        )))
    }
}

impl State {
    /// Names under a prefix, in name order.
    pub fn files_under(&self, prefix: &str) -> Vec<String> {
        self.files
            .range(prefix.to_string()..)
            .take_while(|(p, _)| p.starts_with(prefix))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// A file's record.
    pub fn file(&self, path: &str) -> Result<&FileRecord, CommandError> {
        self.files
            .get(path)
            .ok_or_else(|| CommandError::NotFound(format!("no file named {path:?}")))
    }

    /// One version of a file (`None`: the newest).
    pub fn version(
        &self,
        path: &str,
        version: Option<u64>,
    ) -> Result<&VersionRecord, CommandError> {
        let file = self.file(path)?;
        match version {
            None => file.versions.first(),
            Some(v) => file.versions.iter().find(|r| r.version == v),
        }
        .ok_or_else(|| match version {
            Some(v) => CommandError::NotFound(format!(
                "{path:?} has no version {v} (kept: {})",
                file.versions
                    .iter()
                    .map(|r| r.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => CommandError::NotFound(format!("{path:?} has no versions")),
        })
    }

    pub fn blob(&self, hash: &str) -> Option<&BlobRecord> {
        self.blobs.get(hash)
    }

    pub fn node(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    /// Every storage node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// Every blob, by hash.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRecord> {
        self.blobs.values()
    }

    /// Nodes marked alive.
    pub fn alive_nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter(|n| n.alive)
    }

    /// The API view of a version.
    pub fn version_view(&self, path: &str, v: &VersionRecord) -> FileVersion {
        FileVersion {
            name: path.to_string(),
            version: v.version,
            size: v.size,
            hash: v.hash.clone(),
            replicas: self
                .blobs
                .get(&v.hash)
                .map(|b| b.replicas.iter().cloned().collect())
                .unwrap_or_default(),
            created_at_ms: v.created_at_ms,
        }
    }

    /// The API view of a file in a listing.
    pub fn file_info(&self, file: &FileRecord) -> Option<FileInfo> {
        let latest = file.versions.first()?;
        Some(FileInfo {
            name: file.path.clone(),
            latest: self.version_view(&file.path, latest),
            versions: file.versions.len() as u32,
        })
    }

    pub(super) fn register_node(
        &mut self,
        id: String,
        addr: String,
        now: Millis,
    ) -> Result<(), CommandError> {
        validate_node_id(&id)?;
        if addr.is_empty() || !addr.contains(':') {
            return Err(CommandError::Invalid(format!("{addr:?} is not HOST:PORT")));
        }
        if let Some(other) = self
            .nodes
            .values()
            .find(|n| n.id != id && n.alive && n.addr.eq_ignore_ascii_case(&addr))
        {
            return Err(CommandError::Conflict(format!(
                "{addr} is the address of live storage node {}",
                other.id
            )));
        }
        let record = NodeRecord {
            id: id.clone(),
            addr,
            alive: true,
            since_ms: now,
        };
        if self.nodes.get(&id) != Some(&record) {
            self.nodes.insert(id.clone(), record);
            self.touch(Key::Node(id));
        }
        Ok(())
    }

    pub(super) fn set_node_alive(
        &mut self,
        id: &str,
        alive: bool,
        now: Millis,
    ) -> Result<(), CommandError> {
        let node = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| CommandError::NotFound(format!("no storage node {id:?}")))?;
        if node.alive != alive {
            node.alive = alive;
            node.since_ms = now;
            self.touch(Key::Node(id.to_string()));
        }
        Ok(())
    }

    /// Adds a version of `path` stored as blob `hash` on `replicas`; keeps the newest `keep`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_version(
        &mut self,
        path: String,
        hash: String,
        size: u64,
        replicas: Vec<String>,
        target: u32,
        keep: u32,
        now: Millis,
    ) -> Result<(FileVersion, Vec<FreedBlob>), CommandError> {
        validate_path(&path).map_err(CommandError::Invalid)?;
        validate_hash(&hash)?;
        if replicas.is_empty() {
            return Err(CommandError::Invalid(
                "a version needs at least one replica".into(),
            ));
        }
        if let Some(unknown) = replicas.iter().find(|r| !self.nodes.contains_key(*r)) {
            return Err(CommandError::Invalid(format!(
                "unknown storage node {unknown:?}"
            )));
        }
        let blob = self
            .blobs
            .entry(hash.clone())
            .or_insert_with(|| BlobRecord {
                hash: hash.clone(),
                size,
                target,
                replicas: BTreeSet::new(),
                refs: 0,
            });
        blob.refs += 1;
        blob.target = blob.target.max(target);
        let size = blob.size;
        for node in replicas {
            if blob.replicas.insert(node.clone()) {
                *self.node_bytes.entry(node).or_default() += size;
            }
        }
        self.touch(Key::Blob(hash.clone()));

        let file = self
            .files
            .entry(path.clone())
            .or_insert_with(|| FileRecord {
                path: path.clone(),
                versions: Vec::new(),
                next_version: 1,
            });
        let version = VersionRecord {
            version: file.next_version,
            hash,
            size,
            created_at_ms: now,
        };
        file.next_version += 1;
        file.versions.insert(0, version.clone());
        let dropped: Vec<VersionRecord> = if file.versions.len() > keep.max(1) as usize {
            file.versions.split_off(keep.max(1) as usize)
        } else {
            Vec::new()
        };
        self.touch(Key::File(path.clone()));
        let freed = dropped
            .iter()
            .filter_map(|v| self.unref_blob(&v.hash))
            .collect();
        Ok((self.version_view(&path, &version), freed))
    }

    /// Removes a name and all its versions.
    pub(super) fn delete_file(&mut self, path: &str) -> Result<Vec<FreedBlob>, CommandError> {
        let file = self
            .files
            .remove(path)
            .ok_or_else(|| CommandError::NotFound(format!("no file named {path:?}")))?;
        self.touch(Key::File(path.to_string()));
        Ok(file
            .versions
            .iter()
            .filter_map(|v| self.unref_blob(&v.hash))
            .collect())
    }

    /// Removes every name under `prefix`.
    pub(super) fn delete_files_under(&mut self, prefix: &str) -> Vec<FreedBlob> {
        self.files_under(prefix)
            .iter()
            .flat_map(|p| self.delete_file(p).unwrap_or_default())
            .collect()
    }

    /// One version fewer refers to `hash`; returns the blob if that was the last one.
    fn unref_blob(&mut self, hash: &str) -> Option<FreedBlob> {
        let blob = self.blobs.get_mut(hash)?;
        blob.refs = blob.refs.saturating_sub(1);
        let still_used = blob.refs > 0;
        self.touch(Key::Blob(hash.to_string()));
        if still_used {
            return None;
        }
        let blob = self.blobs.remove(hash)?;
        for node in &blob.replicas {
            self.unplace(node, blob.size);
        }
        Some(FreedBlob {
            hash: blob.hash,
            replicas: blob.replicas.into_iter().collect(),
        })
    }

    /// Records that `nodes` hold `hash` (a finished copy). False if the blob is gone.
    pub(super) fn add_replicas(&mut self, hash: &str, nodes: Vec<String>) -> bool {
        let known: Vec<String> = nodes
            .into_iter()
            .filter(|n| self.nodes.contains_key(n))
            .collect();
        match self.blobs.get_mut(hash) {
            Some(blob) => {
                for node in known {
                    if blob.replicas.insert(node.clone()) {
                        *self.node_bytes.entry(node).or_default() += blob.size;
                    }
                }
                self.touch(Key::Blob(hash.to_string()));
                true
            }
            None => false,
        }
    }

    /// Records that `nodes` no longer hold `hash` (lost, corrupt, or trimmed).
    pub(super) fn drop_replicas(&mut self, hash: &str, nodes: &[String]) -> bool {
        match self.blobs.get_mut(hash) {
            Some(blob) => {
                let size = blob.size;
                let dropped: Vec<&String> =
                    nodes.iter().filter(|n| blob.replicas.remove(*n)).collect();
                for node in dropped {
                    self.unplace(node, size);
                }
                self.touch(Key::Blob(hash.to_string()));
                true
            }
            None => false,
        }
    }

    /// Bytes of the blobs whose replica sets name `node` (kept as the sets change).
    pub fn stored_bytes(&self, node: &str) -> u64 {
        self.node_bytes.get(node).copied().unwrap_or(0)
    }

    /// `node` no longer holds `size` bytes of some blob.
    fn unplace(&mut self, node: &str, size: u64) {
        if let Some(bytes) = self.node_bytes.get_mut(node) {
            *bytes = bytes.saturating_sub(size);
            if *bytes == 0 {
                self.node_bytes.remove(node);
            }
        }
    }

    /// Derives [`State::stored_bytes`] from the blob records (on load).
    pub(super) fn rebuild_node_bytes(&mut self) {
        self.node_bytes.clear();
        for blob in self.blobs.values() {
            for node in &blob.replicas {
                *self.node_bytes.entry(node.clone()).or_default() += blob.size;
            }
        }
    }
}
