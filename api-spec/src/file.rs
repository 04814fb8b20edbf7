//! SDFS bodies and rules: file names, versions, replicas, storage nodes.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// Longest file name, in bytes.
pub const MAX_PATH_LEN: usize = 1024;

/// Final name segments reserved for the `…/replicas` and `…/versions` sub-resources.
pub const RESERVED_SEGMENTS: &[&str] = &["replicas", "versions"];

/// Checks an SDFS name: `/`-separated segments, none empty, `.` or `..`, no control
/// characters or backslashes, at most [`MAX_PATH_LEN`] bytes, and not ending in a reserved
/// segment.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a file name cannot be empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!(
            "a file name is at most {MAX_PATH_LEN} bytes, not {}",
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!("a file name cannot contain {c:?}"));
    }
    for segment in path.split('/') {
        match segment {
            "" => {
                return Err(format!(
                    "{path:?} has an empty segment (leading, trailing or double '/')"
                ))
            }
            "." | ".." => return Err(format!("{path:?} has a {segment:?} segment")),
            _ => {}
        }
    }
    if let Some(last) = path.rsplit('/').next() {
        if RESERVED_SEGMENTS.contains(&last) && path.contains('/') {
            return Err(format!(
                "a file name cannot end in /{last} (reserved for the API)"
            ));
        }
    }
    Ok(())
}

/// One stored version of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub name: String,
    /// 1 for the first version of a name; never reused.
    pub version: u64,
    pub size: u64,
    /// BLAKE3 of the content, hex.
    pub hash: String,
    /// Storage nodes holding it.
    pub replicas: Vec<String>,
    pub created_at_ms: Millis,
}

/// A file in a listing: its newest version and how many are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub name: String,
    pub latest: FileVersion,
    pub versions: u32,
}

/// Where one version's bytes are (`GET /v1/files/{path}/replicas`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    pub name: String,
    pub version: u64,
    pub hash: String,
    pub size: u64,
    /// Replicas wanted.
    pub target: u32,
    pub replicas: Vec<Replica>,
}

/// One replica of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: String,
    pub addr: String,
    pub alive: bool,
}

/// A storage node as the namespace knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageNode {
    pub id: String,
    pub addr: String,
    pub alive: bool,
    /// Blobs the namespace places on it.
    pub blobs: u64,
    pub bytes: u64,
}

/// `POST /v1/nodes/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    pub id: String,
    pub addr: String,
}

/// `POST /v1/nodes/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// Blobs it holds now and their total size.
    pub blobs: u64,
    pub bytes: u64,
    /// Blobs it found corrupt (and dropped) since the last heartbeat, hex hashes.
    #[serde(default)]
    pub lost: Vec<String>,
}

/// One blob a storage node holds (`GET /internal/blobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub hash: String,
    pub size: u64,
    /// Milliseconds since it was stored (or last stored again).
    pub age_ms: u64,
    /// Changes whenever the blob is stored again; `DELETE …?stamp=` deletes only a blob that
    /// still has the stamp given (0 from a node that predates stamps).
    #[serde(default)]
    pub stamp: u64,
}

/// What a storage node answers to a blob write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlob {
    pub hash: String,
    pub size: u64,
}

/// `POST /internal/blobs/{hash}/fetch`: copy a blob from another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchBlob {
    /// Address of a node holding it.
    pub from: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for p in [
            "cat.png",
            "images/cat.png",
            "a/b/c d/é.jpg",
            "replicas",
            "x/replicas.png",
        ] {
            assert!(validate_path(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn bad_names_fail() {
        let long = "a".repeat(MAX_PATH_LEN + 1);
        for p in [
            "",
            "/abs",
            "trail/",
            "a//b",
            "../etc/passwd",
            "a/./b",
            "a/..",
            "nul\0",
            "tab\tx",
            "back\\slash",
            long.as_str(),
            "images/replicas",
            "x/versions",
        ] {
            assert!(validate_path(p).is_err(), "{p:?}");
        }
    }
}
