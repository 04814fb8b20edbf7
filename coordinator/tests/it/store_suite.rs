//! openraft's storage test suite against IDunno's sled log store and state machine.

use idunno_coordinator::raft::log_store::LogStore;
use idunno_coordinator::raft::state_machine::StateMachineStore;
use idunno_coordinator::raft::{NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path().join("raft")).expect("sled");
        let log = LogStore::open(&db).expect("log store");
        let sm = StateMachineStore::open(&db)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("the storage suite failed: {e}");
    }
}
