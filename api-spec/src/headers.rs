//! The HTTP headers IDunno's processes exchange, named once. Routes and clients import them
//! from here; nobody spells them out.

/// A client-chosen id for a write, so that a retried write is applied once.
pub const REQUEST_ID_HEADER: &str = "idempotency-key";

/// The cluster secret, between IDunno processes (Raft, storage nodes' internal routes,
/// storage-node registration) and from administrators (membership changes).
pub const SECRET_HEADER: &str = "x-idunno-secret";

/// A blob's or a file version's BLAKE3 content hash (hex), on answers that carry content.
pub const HASH_HEADER: &str = "x-idunno-hash";

/// The SDFS version number of a file answer.
pub const VERSION_HEADER: &str = "x-idunno-version";

/// On a blob upload: the hash the sender expects; the storage node refuses other content.
pub const EXPECT_HASH_HEADER: &str = "x-idunno-expect-hash";

/// A storage node's stamp of a blob copy, which changes whenever the copy is stored again
/// (garbage collection deletes only the copy it stamped).
pub const STAMP_HEADER: &str = "x-idunno-stamp";

/// On a job's results: whether every query is in them.
pub const COMPLETE_HEADER: &str = "x-idunno-complete";

/// Marks a request one coordinator forwarded to another (never forwarded twice).
pub const FORWARDED_HEADER: &str = "x-idunno-forwarded";

/// The coordinator that sent a request to another (Raft RPCs, read-index calls, forwarded
/// requests), for the fault-injection link switch.
pub const NODE_HEADER: &str = "x-idunno-node";
