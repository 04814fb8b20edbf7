//! Unit tests of the replicated state: job and batch life cycles, exactly-once completion,
//! request-id deduplication, determinism and the stored form.

use idunno_api::job::{Inputs, JobState};

use super::command::{Command, CommandError, Request, Response};
use super::files::FreedBlob;
use super::jobs::BatchId;
use super::{Change, State};

fn req(id: &str, time_ms: u64, cmd: Command) -> Request {
    Request {
        id: id.to_string(),
        time_ms,
        cmd,
    }
}

fn model(state: &mut State) {
    let r = state.apply(req(
        "m",
        1,
        Command::PutModel {
            name: "r18".into(),
            arch: idunno_api::arch::Arch::ResNet18,
            weights: "models/r18.safetensors".into(),
            input_size: 224,
            cost_ms: None,
            online: Default::default(),
        },
    ));
    assert!(matches!(r, Response::Model(_)), "{r:?}");
}

fn job(state: &mut State, inputs: usize, batch_size: u32) -> u64 {
    let r = state.apply(req(
        &format!("job-{}", state.jobs.len()),
        2,
        Command::CreateJob {
            name: None,
            model: "r18".into(),
            inputs: Inputs::List((0..inputs).map(|i| format!("img/{i}.png")).collect()),
            batch_size,
            weight: 1,
            start: true,
        },
    ));
    match r {
        Response::Job { id } => id,
        other => panic!("{other:?}"),
    }
}

fn lease(state: &mut State, worker: &str, job: u64, t: u64) -> Option<super::command::LeaseGrant> {
    lease_with(state, worker, job, 0, t)
}

/// A lease of `passes` passes (0: as entries from before there was a choice).
fn lease_with(
    state: &mut State,
    worker: &str,
    job: u64,
    passes: u32,
    t: u64,
) -> Option<super::command::LeaseGrant> {
    match state.apply(req(
        "",
        t,
        Command::Lease {
            worker: worker.into(),
            job,
            lease_timeout_ms: 1000,
            passes,
        },
    )) {
        Response::Leased(g) => Some(g),
        Response::NoWork => None,
        other => panic!("{other:?}"),
    }
}

fn complete(state: &mut State, batch: BatchId, lease_id: u64) -> Response {
    state.apply(req(
        "",
        10,
        Command::Complete {
            batch,
            lease_id,
            result: format!("results/{batch}"),
            failed: 0,
            compute_ms: 5,
            results: None,
        },
    ))
}

fn expire(state: &mut State, batch: BatchId, lease_id: u64, t: u64) -> Response {
    state.apply(req(
        "",
        t,
        Command::Expire {
            leases: vec![(batch, lease_id)],
        },
    ))
}

#[test]
fn a_job_is_cut_into_batches_in_input_order_and_finishes() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 5, 2);
    let mut seen = Vec::new();
    while let Some(g) = lease(&mut s, "w1", id, 3) {
        seen.extend(g.inputs.clone());
        assert_eq!(
            complete(&mut s, g.batch, g.lease_id),
            Response::Completed {
                accepted: true,
                freed: vec![]
            }
        );
    }
    let expected: Vec<String> = (0..5).map(|i| format!("img/{i}.png")).collect();
    assert_eq!(seen, expected);
    let j = s.job(id).unwrap();
    assert_eq!(j.state, JobState::Done);
    assert_eq!((j.done, j.batches_done, j.in_flight), (5, 3, 0));
    assert_eq!(j.finished_at_ms, Some(10));
}

#[test]
fn huge_numbers_in_completions_saturate_instead_of_panicking() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 2, 1);
    for _ in 0..2 {
        let g = lease(&mut s, "w", id, 3).unwrap();
        let r = s.apply(req(
            "",
            4,
            Command::Complete {
                batch: g.batch,
                lease_id: g.lease_id,
                result: "r".into(),
                failed: u32::MAX,
                compute_ms: u64::MAX,
                results: None,
            },
        ));
        assert_eq!(
            r,
            Response::Completed {
                accepted: true,
                freed: vec![]
            }
        );
    }
    let j = s.job(id).unwrap();
    assert_eq!(j.compute_ms, u64::MAX, "saturated, not wrapped");
    // `failed` counts at most the batch's own inputs.
    assert_eq!((j.done, j.failed, j.batches_done), (2, 2, 2));
    assert_eq!(j.state, JobState::Done);
}

#[test]
fn a_batch_is_done_exactly_once_even_after_its_lease_expired() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 4, 4);
    let first = lease(&mut s, "slow", id, 3).unwrap();
    assert_eq!(s.job(id).unwrap().in_flight, 4);
    // The slow worker is declared dead; the batch goes back and is handed to another worker.
    let r = expire(&mut s, first.batch, first.lease_id, 4);
    assert_eq!(r, Response::Expired { count: 1 });
    assert_eq!(s.job(id).unwrap().in_flight, 0);
    let second = lease(&mut s, "fast", id, 5).unwrap();
    assert_eq!(second.batch, first.batch);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease_id, first.lease_id);
    // The slow worker finishes first after all: its late completion counts...
    assert_eq!(
        complete(&mut s, first.batch, first.lease_id),
        Response::Completed {
            accepted: true,
            freed: vec![]
        }
    );
    // ...and the second one is acknowledged and dropped.
    assert_eq!(
        complete(&mut s, second.batch, second.lease_id),
        Response::Completed {
            accepted: false,
            freed: vec![]
        }
    );
    let j = s.job(id).unwrap();
    assert_eq!(
        (j.done, j.batches_done, j.retries, j.in_flight),
        (4, 1, 1, 0)
    );
    assert_eq!(j.state, JobState::Done);
}

#[test]
fn a_completion_carrying_results_stores_them_only_if_it_counts() {
    let mut s = State::default();
    model(&mut s);
    node(&mut s, "n1");
    let id = job(&mut s, 2, 2);
    let first = lease(&mut s, "slow", id, 3).unwrap();
    expire(&mut s, first.batch, first.lease_id, 4);
    let second = lease(&mut s, "fast", id, 5).unwrap();
    let name = format!("results/{id}/{}.json", first.batch);
    let with_results = |g: &super::command::LeaseGrant, h: String| Command::Complete {
        batch: g.batch,
        lease_id: g.lease_id,
        result: name.clone(),
        failed: 1,
        compute_ms: 7,
        results: Some(super::files::NewVersion {
            hash: h,
            size: 40,
            replicas: vec!["n1".into()],
            target: 1,
            keep: 3,
        }),
    };
    // The first completion counts: its object is the name's one version, in the same entry.
    assert_eq!(
        s.apply(req("", 6, with_results(&second, hash(1)))),
        Response::Completed {
            accepted: true,
            freed: vec![]
        }
    );
    let file = s.file(&name).unwrap();
    assert_eq!(file.versions.len(), 1);
    assert_eq!(file.versions[0].hash, hash(1));
    assert_eq!(s.job(id).unwrap().failed, 1);
    // A retry of it (same content) is dropped and frees nothing: the version uses that blob.
    assert_eq!(
        s.apply(req("", 7, with_results(&second, hash(1)))),
        Response::Completed {
            accepted: false,
            freed: vec![]
        }
    );
    // The slow worker's late completion is dropped, its object freed, the version untouched.
    assert_eq!(
        s.apply(req("", 8, with_results(&first, hash(2)))),
        Response::Completed {
            accepted: false,
            freed: vec![FreedBlob {
                hash: hash(2),
                replicas: vec!["n1".into()]
            }]
        }
    );
    let file = s.file(&name).unwrap();
    assert_eq!(file.versions.len(), 1);
    assert_eq!(file.versions[0].hash, hash(1));
    assert!(s.blob(&hash(2)).is_none());
    let j = s.job(id).unwrap();
    assert_eq!((j.done, j.batches_done, j.failed), (2, 1, 1));
    // A lease never issued for the batch stores nothing either.
    let forged = super::command::LeaseGrant {
        lease_id: 999,
        ..second.clone()
    };
    assert!(matches!(
        s.apply(req("", 9, with_results(&forged, hash(3)))),
        Response::Failed(CommandError::Conflict(_))
    ));
    assert!(s.blob(&hash(3)).is_none());
}

#[test]
fn a_late_completion_of_a_requeued_batch_takes_it_out_of_the_queue() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 2, 1);
    let g = lease(&mut s, "w", id, 3).unwrap();
    expire(&mut s, g.batch, g.lease_id, 4);
    assert_eq!(s.job(id).unwrap().retry.len(), 1);
    assert_eq!(
        complete(&mut s, g.batch, g.lease_id),
        Response::Completed {
            accepted: true,
            freed: vec![]
        }
    );
    assert!(s.job(id).unwrap().retry.is_empty());
    // Only the second input is left.
    let next = lease(&mut s, "w", id, 5).unwrap();
    assert_eq!(next.inputs, vec!["img/1.png".to_string()]);
}

#[test]
fn completions_with_unknown_leases_or_batches_are_refused() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 2, 1);
    let g = lease(&mut s, "w", id, 3).unwrap();
    assert!(matches!(
        complete(&mut s, g.batch, 999),
        Response::Failed(CommandError::Conflict(_))
    ));
    let missing = BatchId { job: id, seq: 42 };
    assert!(matches!(
        complete(&mut s, missing, g.lease_id),
        Response::Failed(CommandError::NotFound(_))
    ));
    let other_job = BatchId { job: 77, seq: 0 };
    assert!(matches!(
        complete(&mut s, other_job, g.lease_id),
        Response::Failed(CommandError::NotFound(_))
    ));
}

#[test]
fn released_batches_go_first_and_expiry_ignores_stale_leases() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 6, 2);
    let a = lease(&mut s, "w", id, 3).unwrap();
    let b = lease(&mut s, "w", id, 3).unwrap();
    let r = s.apply(req(
        "",
        4,
        Command::Release {
            batch: b.batch,
            lease_id: b.lease_id,
        },
    ));
    assert_eq!(r, Response::Released { released: true });
    // Expiring with the wrong lease id does nothing.
    let r = expire(&mut s, a.batch, a.lease_id + 100, 4);
    assert_eq!(r, Response::Expired { count: 0 });
    let next = lease(&mut s, "v", id, 5).unwrap();
    assert_eq!(next.batch, b.batch);
    // Giving back a lease that is no longer current, or of an unknown batch, is refused.
    let release = |batch, lease_id| Command::Release { batch, lease_id };
    let r = s.apply(req("", 6, release(b.batch, b.lease_id)));
    assert_eq!(r, Response::Released { released: false });
    let unknown = BatchId { job: id, seq: 99 };
    let r = s.apply(req("", 6, release(unknown, 1)));
    assert!(
        matches!(r, Response::Failed(CommandError::NotFound(_))),
        "{r:?}"
    );
}

#[test]
fn stop_start_and_batch_size_changes_apply_to_the_next_lease() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 10, 2);
    let first = lease(&mut s, "w", id, 3).unwrap();
    assert_eq!(first.inputs.len(), 2);
    s.apply(req("stop", 4, Command::StopJob { job: id }));
    assert!(
        lease(&mut s, "w", id, 5).is_none(),
        "a stopped job hands nothing out"
    );
    // In-flight work of a stopped job still completes.
    assert_eq!(
        complete(&mut s, first.batch, first.lease_id),
        Response::Completed {
            accepted: true,
            freed: vec![]
        }
    );
    s.apply(req(
        "bs",
        6,
        Command::UpdateJob {
            job: id,
            batch_size: Some(5),
            weight: None,
        },
    ));
    s.apply(req("start", 7, Command::StartJob { job: id }));
    let g = lease(&mut s, "w", id, 8).unwrap();
    assert_eq!(g.inputs.len(), 5);
    assert_eq!(g.start, 2);
}

#[test]
fn bad_jobs_are_refused() {
    let mut s = State::default();
    model(&mut s);
    let mut create = |model: &str, inputs: Inputs, batch_size: u32| {
        s.apply(req(
            "",
            2,
            Command::CreateJob {
                name: None,
                model: model.into(),
                inputs,
                batch_size,
                weight: 1,
                start: false,
            },
        ))
    };
    let list = || Inputs::List(vec!["a".into()]);
    assert!(matches!(
        create("nope", list(), 1),
        Response::Failed(CommandError::Invalid(_))
    ));
    assert!(matches!(
        create("r18", list(), 0),
        Response::Failed(CommandError::Invalid(_))
    ));
    assert!(matches!(
        create("r18", Inputs::List(vec![]), 1),
        Response::Failed(CommandError::Invalid(_))
    ));
    let prefix = Inputs::Prefix {
        prefix: "none/".into(),
    };
    assert!(matches!(
        create("r18", prefix, 1),
        Response::Failed(CommandError::Invalid(_))
    ));
    assert!(s.jobs.is_empty());
}

#[test]
fn a_retried_request_applies_once_and_gets_the_same_answer() {
    let mut s = State::default();
    model(&mut s);
    let create = Command::CreateJob {
        name: Some("once".into()),
        model: "r18".into(),
        inputs: Inputs::List(vec!["a".into()]),
        batch_size: 1,
        weight: 1,
        start: false,
    };
    let first = s.apply(req("client-42", 5, create.clone()));
    let again = s.apply(req("client-42", 6, create.clone()));
    assert_eq!(first, again);
    assert_eq!(s.jobs.len(), 1);
    // After the TTL, the id is forgotten and the same request is a new one.
    let later = 6 + super::REQUEST_TTL_MS + 1;
    let third = s.apply(req("client-42", later, create));
    assert_ne!(third, first);
    assert_eq!(s.jobs.len(), 2);
}

#[test]
fn a_request_id_reused_for_a_different_request_is_refused_and_changes_nothing() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 2, 1);
    // "job-0" created the job: the same id on a different kind of command...
    let r = s.apply(req("job-0", 3, Command::StopJob { job: id }));
    match r {
        Response::Failed(CommandError::Conflict(m)) => {
            assert!(m.contains("job-0") && m.contains("create_job"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.job(id).unwrap().state, JobState::Running);
    // ...or on the same kind with other content is refused as well.
    let other_job = Command::CreateJob {
        name: Some("other".into()),
        model: "r18".into(),
        inputs: Inputs::List(vec!["x.png".into()]),
        batch_size: 1,
        weight: 1,
        start: true,
    };
    let r = s.apply(req("job-0", 4, other_job));
    assert!(
        matches!(r, Response::Failed(CommandError::Conflict(_))),
        "{r:?}"
    );
    assert_eq!(s.jobs.len(), 1);
    // The real retry still gets the first answer.
    let retry = Command::CreateJob {
        name: None,
        model: "r18".into(),
        inputs: Inputs::List((0..2).map(|i| format!("img/{i}.png")).collect()),
        batch_size: 1,
        weight: 1,
        start: true,
    };
    assert_eq!(s.apply(req("job-0", 5, retry)), Response::Job { id });
    // An upload's retry may pick other replicas and is still the same request.
    let put = |replicas: Vec<String>| Command::PutVersion {
        path: "a".into(),
        hash: hash(1),
        size: 3,
        replicas,
        target: 3,
        keep: 5,
    };
    node(&mut s, "n1");
    node(&mut s, "n2");
    let first = s.apply(req("up", 6, put(vec!["n1".into()])));
    assert!(matches!(first, Response::Version { .. }), "{first:?}");
    assert_eq!(s.apply(req("up", 7, put(vec!["n2".into()]))), first);
}

#[test]
fn a_retried_lease_call_gets_the_same_lease() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 4, 1);
    let lease_cmd = Command::Lease {
        worker: "w".into(),
        job: id,
        lease_timeout_ms: 1000,
        passes: 0,
    };
    let a = s.apply(req("lease-1", 3, lease_cmd.clone()));
    let b = s.apply(req("lease-1", 4, lease_cmd));
    assert_eq!(a, b);
    assert_eq!(s.job(id).unwrap().in_flight, 1);
}

#[test]
fn apply_is_deterministic_and_the_stored_form_round_trips() {
    let run = || {
        let mut s = State::default();
        model(&mut s);
        let id = job(&mut s, 7, 3);
        let g = lease(&mut s, "w", id, 3).unwrap();
        complete(&mut s, g.batch, g.lease_id);
        let g = lease(&mut s, "w", id, 4).unwrap();
        expire(&mut s, g.batch, g.lease_id, 5);
        lease(&mut s, "v", id, 6).unwrap();
        s
    };
    let (a, b) = (run(), run());
    assert_eq!(a.dump(), b.dump());
    let restored = State::load(a.dump()).unwrap();
    assert_eq!(restored.dump(), a.dump());
    // Derived indexes are rebuilt: the restored state knows the lease in flight.
    assert_eq!(restored.leases().count(), 1);
}

#[test]
fn changes_name_exactly_the_records_written() {
    let mut s = State::default();
    model(&mut s);
    s.take_changes();
    let id = job(&mut s, 3, 1);
    let put: Vec<Vec<u8>> = s
        .take_changes()
        .into_iter()
        .filter_map(|c| match c {
            Change::Put(k, _) => Some(k),
            _ => None,
        })
        .collect();
    assert!(put.contains(&super::Key::Job(id).encode()));
    let prefix = super::Key::Inputs(id).encode();
    assert_eq!(
        put.iter().filter(|k| k.starts_with(&prefix)).count(),
        1,
        "one record per chunk of inputs"
    );
    assert!(s.take_changes().is_empty());
    s.apply(req("del", 9, Command::DeleteJob { job: id }));
    let changes = s.take_changes();
    assert!(changes.contains(&Change::Delete(super::Key::Job(id).encode())));
    assert!(changes.contains(&Change::DeletePrefix(prefix)));
}

#[test]
fn a_long_input_list_is_stored_in_chunks_and_read_back_in_order() {
    let mut s = State::default();
    model(&mut s);
    // Names of 9-11 bytes: ~300 of them fill a record.
    let id = job(&mut s, 700, 1);
    let records: Vec<_> = s
        .take_changes()
        .into_iter()
        .filter_map(|c| match c {
            Change::Put(k, v) => Some((k, v)),
            _ => None,
        })
        .collect();
    let prefix = super::Key::Inputs(id).encode();
    let chunks: Vec<_> = records
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect();
    assert_eq!(chunks.len(), 3);
    assert!(chunks
        .iter()
        .all(|(_, v)| v.len() <= super::INPUT_CHUNK_BYTES));
    let restored = State::load(records).unwrap();
    assert_eq!(restored.inputs_of(id), s.inputs_of(id));
    // A list stored by an earlier version, one name per key, still loads.
    let mut legacy: Vec<(Vec<u8>, Vec<u8>)> = s
        .dump()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(&prefix))
        .collect();
    for (i, name) in s.inputs_of(id).unwrap().iter().enumerate() {
        let mut key = vec![b'i'];
        key.extend_from_slice(&id.to_be_bytes());
        key.extend_from_slice(&(i as u32).to_be_bytes());
        legacy.push((key, name.clone().into_bytes()));
    }
    let restored = State::load(legacy).unwrap();
    assert_eq!(restored.inputs_of(id), s.inputs_of(id));
}

#[test]
fn a_model_in_use_cannot_be_deleted() {
    let mut s = State::default();
    model(&mut s);
    job(&mut s, 1, 1);
    let r = s.apply(req("", 3, Command::DeleteModel { name: "r18".into() }));
    assert!(matches!(r, Response::Failed(CommandError::Conflict(_))));
}

fn node(s: &mut State, id: &str) {
    let r = s.apply(req(
        "",
        1,
        Command::RegisterNode {
            id: id.into(),
            // One address per node: two live nodes may not share one.
            addr: format!(
                "127.0.0.1:{}",
                7100 + id.bytes().map(u16::from).sum::<u16>()
            ),
        },
    ));
    assert_eq!(r, Response::Done);
}

fn hash(i: u8) -> String {
    blake3::hash(&[i]).to_hex().to_string()
}

fn put(s: &mut State, path: &str, h: &str, replicas: &[&str]) -> Response {
    s.apply(req(
        "",
        5,
        Command::PutVersion {
            path: path.into(),
            hash: h.into(),
            size: 10,
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
            target: 3,
            keep: 5,
        },
    ))
}

#[test]
fn six_puts_keep_five_versions_newest_first_and_free_the_oldest_blob() {
    let mut s = State::default();
    for n in ["s1", "s2", "s3"] {
        node(&mut s, n);
    }
    let mut freed = Vec::new();
    for i in 1..=6u8 {
        match put(&mut s, "images/cat.png", &hash(i), &["s1", "s2"]) {
            Response::Version { version, freed: f } => {
                assert_eq!(version.version, u64::from(i));
                freed.extend(f);
            }
            other => panic!("{other:?}"),
        }
    }
    let file = s.file("images/cat.png").unwrap();
    let versions: Vec<u64> = file.versions.iter().map(|v| v.version).collect();
    assert_eq!(versions, vec![6, 5, 4, 3, 2]);
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].hash, hash(1));
    assert_eq!(freed[0].replicas, vec!["s1".to_string(), "s2".to_string()]);
    assert!(s.blob(&hash(1)).is_none());
    assert!(s.version("images/cat.png", Some(1)).is_err());
}

#[test]
fn a_blob_shared_by_two_names_is_freed_only_with_the_last() {
    let mut s = State::default();
    node(&mut s, "s1");
    put(&mut s, "a.png", &hash(7), &["s1"]);
    put(&mut s, "b.png", &hash(7), &["s1"]);
    assert_eq!(s.blob(&hash(7)).unwrap().refs, 2);
    assert_eq!(
        s.apply(req(
            "",
            6,
            Command::DeleteFile {
                path: "a.png".into()
            }
        )),
        Response::Freed { freed: vec![] }
    );
    match s.apply(req(
        "",
        7,
        Command::DeleteFile {
            path: "b.png".into(),
        },
    )) {
        Response::Freed { freed } => assert_eq!(freed.len(), 1),
        other => panic!("{other:?}"),
    }
    assert!(s.blobs().next().is_none());
    assert!(matches!(
        s.apply(req(
            "",
            8,
            Command::DeleteFile {
                path: "b.png".into()
            }
        )),
        Response::Failed(CommandError::NotFound(_))
    ));
}

#[test]
fn bad_puts_are_refused() {
    let mut s = State::default();
    node(&mut s, "s1");
    for (path, h, replicas) in [
        ("../x", hash(1), vec!["s1"]),
        ("ok.png", "nothex".to_string(), vec!["s1"]),
        ("ok.png", hash(1), vec![]),
        ("ok.png", hash(1), vec!["nobody"]),
    ] {
        assert!(
            matches!(put(&mut s, path, &h, &replicas), Response::Failed(_)),
            "{path} {h} {replicas:?}"
        );
    }
    assert!(s.files_under("").is_empty());
}

#[test]
fn replica_sets_grow_and_shrink_and_liveness_is_recorded() {
    let mut s = State::default();
    for n in ["s1", "s2", "s3"] {
        node(&mut s, n);
    }
    put(&mut s, "f", &hash(1), &["s1"]);
    s.apply(req(
        "",
        6,
        Command::AddReplicas {
            hash: hash(1),
            nodes: vec!["s2".into(), "ghost".into()],
        },
    ));
    let replicas: Vec<&String> = s.blob(&hash(1)).unwrap().replicas.iter().collect();
    assert_eq!(replicas, vec!["s1", "s2"], "unknown nodes are not added");
    s.apply(req(
        "",
        7,
        Command::DropReplicas {
            hash: hash(1),
            nodes: vec!["s1".into()],
        },
    ));
    assert_eq!(s.blob(&hash(1)).unwrap().replicas.len(), 1);
    s.apply(req(
        "",
        8,
        Command::SetNodeAlive {
            id: "s3".into(),
            alive: false,
        },
    ));
    assert_eq!(s.alive_nodes().count(), 2);
    assert_eq!(s.node("s3").unwrap().since_ms, 8);
}

#[test]
fn deleting_a_job_deletes_its_results() {
    let mut s = State::default();
    model(&mut s);
    node(&mut s, "s1");
    let id = job(&mut s, 1, 1);
    put(
        &mut s,
        &idunno_api::result::result_path(id, "1-0"),
        &hash(3),
        &["s1"],
    );
    put(&mut s, "images/keep.png", &hash(4), &["s1"]);
    match s.apply(req("del", 9, Command::DeleteJob { job: id })) {
        Response::Freed { freed } => assert_eq!(freed.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.files_under(""), vec!["images/keep.png".to_string()]);
}

#[test]
fn each_nodes_stored_bytes_follow_puts_copies_drops_and_deletes() {
    // What placement reads (kept up to date, not summed per upload) must equal the bytes the
    // blob records place on each node, after any mix of commands and after a reload.
    let nodes = ["s1", "s2", "s3"];
    let summed = |s: &State, node: &str| -> u64 {
        s.blobs()
            .filter(|b| b.replicas.contains(node))
            .map(|b| b.size)
            .sum()
    };
    let mut s = State::default();
    for n in nodes {
        node(&mut s, n);
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..400u64 {
        let i = next(12) as u8;
        let (path, h) = (format!("f{}", next(8)), hash(i));
        let some = |k: u64| -> Vec<String> {
            nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| (k >> j) & 1 == 1)
                .map(|(_, n)| n.to_string())
                .collect()
        };
        let replicas = some(next(7) + 1);
        let cmd = match next(4) {
            0 => Command::PutVersion {
                path,
                hash: h,
                size: 1000 + 37 * u64::from(i),
                replicas,
                target: 3,
                keep: 2,
            },
            1 => Command::AddReplicas {
                hash: h,
                nodes: replicas,
            },
            2 => Command::DropReplicas {
                hash: h,
                nodes: replicas,
            },
            _ => Command::DeleteFile { path },
        };
        s.apply(req("", 10 + step, cmd));
        for n in nodes {
            assert_eq!(s.stored_bytes(n), summed(&s, n), "{n} after step {step}");
        }
    }
    assert!(nodes.iter().any(|n| s.stored_bytes(n) > 0));
    let restored = State::load(s.dump()).unwrap();
    for n in nodes {
        assert_eq!(
            restored.stored_bytes(n),
            summed(&s, n),
            "{n} after a reload"
        );
    }
}

fn lease_passes(state: &mut State, job: u64, passes: u32, t: u64) -> super::command::LeaseGrant {
    lease_with(state, "w", job, passes, t).expect("a lease")
}

#[test]
fn a_lease_holds_its_passes_and_a_batch_cut_at_a_larger_size_is_cut_again() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 100, 2);
    let pass = |s: &State, b: BatchId| s.batches[&b].pass_size();
    // Three passes of two; more than the most a batch holds is the most.
    let three = lease_passes(&mut s, id, 3, 3);
    assert_eq!((three.start, three.inputs.len()), (0, 6));
    assert_eq!(pass(&s, three.batch), 2);
    let most = lease_passes(&mut s, id, 1000, 4);
    assert_eq!((most.start, most.inputs.len()), (6, 32));
    // A batch given back goes out again as it was, whatever passes the next lease asks for.
    expire(&mut s, three.batch, three.lease_id, 5);
    let again = lease_passes(&mut s, id, 1, 6);
    assert_eq!((again.batch, again.inputs.len()), (three.batch, 6));
    // The batch size grows to 4: a batch cut at 2 still runs as it was (passes of 2).
    let resize = |s: &mut State, size: u32, t: u64| {
        s.apply(req(
            "",
            t,
            Command::UpdateJob {
                job: id,
                batch_size: Some(size),
                weight: None,
            },
        ));
    };
    resize(&mut s, 4, 7);
    expire(&mut s, again.batch, again.lease_id, 8);
    let kept = lease_passes(&mut s, id, 1, 9);
    assert_eq!((kept.batch, kept.inputs.len()), (three.batch, 6));
    assert_eq!(pass(&s, kept.batch), 2);
    // It shrinks to 1: a batch cut at 4 or 2 that comes back is dissolved and its inputs cut
    // again in passes of 1 (a late completion of the old lease is refused).
    resize(&mut s, 1, 10);
    expire(&mut s, most.batch, most.lease_id, 11);
    let recut = lease_passes(&mut s, id, 4, 12);
    assert_ne!(recut.batch, most.batch, "the batch was dissolved");
    assert_eq!((recut.start, recut.inputs.len()), (6, 4));
    assert_eq!(pass(&s, recut.batch), 1);
    assert!(!matches!(
        complete(&mut s, most.batch, most.lease_id),
        Response::Completed { accepted: true, .. }
    ));
    // Every query is still done exactly once.
    let mut done = 0;
    for g in [kept, recut] {
        assert!(matches!(
            complete(&mut s, g.batch, g.lease_id),
            Response::Completed { accepted: true, .. }
        ));
        done += g.inputs.len();
    }
    let mut t = 13;
    while let Some(g) = lease_with(&mut s, "w", id, 16, t) {
        assert!(g.inputs.len() <= 16);
        done += g.inputs.len();
        complete(&mut s, g.batch, g.lease_id);
        t += 1;
    }
    assert_eq!(done, 100);
    assert_eq!(s.job(id).unwrap().done, 100);
}

#[test]
fn a_batch_of_several_passes_holds_no_more_inputs_than_a_results_object_may() {
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 10_000, 1000);
    let g = lease_passes(&mut s, id, 16, 3);
    assert_eq!(g.inputs.len(), 4000, "four passes of 1000, not sixteen");
}

#[test]
fn a_lease_entry_from_before_passes_holds_one_pass() {
    let entry = r#"{"op":"lease","worker":"w","job":1,"lease_timeout_ms":1000}"#;
    let cmd: Command = serde_json::from_str(entry).unwrap();
    let mut s = State::default();
    model(&mut s);
    let id = job(&mut s, 10, 3);
    assert_eq!(id, 1);
    match s.apply(req("", 3, cmd)) {
        Response::Leased(g) => assert_eq!(g.inputs.len(), 3),
        other => panic!("{other:?}"),
    }
}
