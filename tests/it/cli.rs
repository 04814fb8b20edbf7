//! The `idunno` binary as a user runs it: `idunno up` (the README's first command) end to end,
//! and `idunno model add` storing weights in SDFS (or taking them from SDFS) after checking that
//! they load as the architecture, or refusing bad ones with a one-line error.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use idunno_api::file::FileVersion;
use idunno_api::model::Model;
use idunno_models::{weights, Arch};

fn idunno(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idunno"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("IDUNNO_COORDINATORS")
        .output()
        .expect("the idunno binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The line of `table` about `input`.
fn row<'a>(table: &'a str, input: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.contains(input))
        .unwrap_or_else(|| panic!("no row for {input} in:\n{table}"))
}

#[test]
fn up_runs_a_real_job_on_the_sample_photos_and_prints_what_it_saw() {
    let _cpu = common::cpu_shared_blocking();
    let lite0 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/efficientnet_lite0.safetensors");
    assert!(
        lite0.exists(),
        "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does)",
        lite0.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let data = data.to_str().unwrap();
    let out = idunno(&[
        "up",
        "--data",
        data,
        "--listen",
        "127.0.0.1:0",
        "--batch-size",
        "3",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // One row per photo, with the real weights' answers.
    let chelsea = row(&stdout, "images/chelsea.png");
    assert!(
        chelsea.contains("tiger cat") && chelsea.contains("Egyptian cat"),
        "{chelsea}"
    );
    assert!(
        row(&stdout, "images/coffee.png").contains("espresso"),
        "{stdout}"
    );
    assert!(row(&stdout, "images/rocket.jpg").split_whitespace().count() > 3);
    assert!(
        !stdout.contains("SOURCES.md"),
        "only images are uploaded:\n{stdout}"
    );
    // The job's statistics.
    assert!(stdout.contains("4 done of 4 (0 failed"), "{stdout}");
    assert!(stdout.contains("job 1 (done)"), "{stdout}");
    assert!(stdout.contains("lease to result  4 "), "{stdout}");

    // Its data folder is its own: a second run empties and reuses it, a foreign one is refused.
    let again = idunno(&["up", "--data", data, "--listen", "127.0.0.1:0"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let foreign = dir.path().join("mine");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), b"keep me").unwrap();
    let refused = idunno(&[
        "up",
        "--data",
        foreign.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(
        err.contains("not made by `idunno up`") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        std::fs::read(foreign.join("precious.txt")).unwrap(),
        b"keep me"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_add_stores_weights_that_fit_and_refuses_the_rest() {
    let (cluster, dir) = common::cluster(1, 2, 0, |_| {}).await;
    let addr = cluster.coordinator_addrs()[0].clone();
    let client = cluster.client();
    let run = |args: Vec<String>| {
        let mut all = vec!["model".to_string(), "--coordinators".into(), addr.clone()];
        all.extend(args);
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            idunno(&refs)
        })
    };
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();

    // Generated weights: checked, stored in SDFS under models/, registered.
    let out = run(args("add r18 --arch resnet18 --weights generate:3"))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model: Model = client.get("/v1/models/r18").await.unwrap();
    assert_eq!(
        (model.arch.name(), model.weights.as_str()),
        ("resnet18", "models/r18.safetensors")
    );
    let stored: Vec<FileVersion> = client
        .get("/v1/files/models/r18.safetensors/versions?n=1")
        .await
        .unwrap();
    let want = weights::generate_to_bytes(Arch::ResNet18, 3).unwrap();
    assert_eq!(stored[0].size, want.len() as u64);
    assert_eq!(stored[0].hash, common::hash_hex(&want));

    // A local file; then the same weights again by their SDFS name.
    let local = dir.path().join("r18.safetensors");
    std::fs::write(&local, &want).unwrap();
    let out = run(vec![
        "add".into(),
        "mine".into(),
        "--arch".into(),
        "resnet18".into(),
        "--weights".into(),
        local.display().to_string(),
    ])
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(args(
        "add again --arch resnet18 --weights sdfs:models/mine.safetensors",
    ))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again: Model = client.get("/v1/models/again").await.unwrap();
    assert_eq!(again.weights, "models/mine.safetensors");
    // A bare name that is no local file is an SDFS name, checked the same way.
    let out = run(args(
        "add bare --arch resnet18 --weights models/r18.safetensors",
    ))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bare: Model = client.get("/v1/models/bare").await.unwrap();
    assert_eq!(bare.weights, "models/r18.safetensors");

    // Refused, each with one line that says why, and nothing registered or stored.
    let resnet18_file = local.display().to_string();
    for (cmd, why) in [
        (
            vec![
                "add",
                "bad",
                "--arch",
                "resnet50",
                "--weights",
                resnet18_file.as_str(),
            ],
            "do not fit resnet50",
        ),
        (
            vec!["add", "bad", "--arch", "vgg16", "--weights", "generate"],
            "unknown architecture",
        ),
        (
            vec![
                "add",
                "bad",
                "--arch",
                "resnet18",
                "--weights",
                "nowhere.safetensors",
            ],
            "neither a local file nor a file in SDFS",
        ),
        // ResNet-18 weights already in SDFS are downloaded and refused as another network.
        (
            vec![
                "add",
                "bad",
                "--arch",
                "resnet50",
                "--weights",
                "sdfs:models/mine.safetensors",
            ],
            "do not fit resnet50",
        ),
        (
            vec![
                "add",
                "bad",
                "--arch",
                "efficientnet_lite0",
                "--weights",
                "models/r18.safetensors",
            ],
            "do not fit efficientnet_lite0",
        ),
        (
            vec![
                "add",
                "bad",
                "--arch",
                "resnet18",
                "--weights",
                "sdfs:models/none",
            ],
            "no file",
        ),
    ] {
        let out = run(cmd.iter().map(|s| s.to_string()).collect())
            .await
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{cmd:?} succeeded");
        assert!(
            err.contains(why) && err.trim().lines().count() == 1,
            "{cmd:?}: {err}"
        );
    }
    // A name is one path segment however it is spelled: `../models/mine` is no way to reach
    // model `mine` (unencoded, the URL would normalise to /v1/models/mine and delete it).
    for cmd in ["delete", "show", "load"] {
        let out = run(vec![cmd.into(), "../models/mine".into()])
            .await
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{cmd} succeeded");
        assert!(err.contains("../models/mine"), "{cmd}: {err}");
    }
    let names: Vec<String> = client
        .get::<Vec<Model>>("/v1/models")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["again", "bare", "mine", "r18"]);
    let (code, _) = common::http(
        reqwest::Method::GET,
        &format!("http://{addr}/v1/files/models/bad.safetensors"),
        &[],
        None,
    )
    .await;
    assert_eq!(code, reqwest::StatusCode::NOT_FOUND);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_stats_workers_and_watch_show_a_job_as_the_api_does() {
    let (mut cluster, _dir) = common::cluster(1, 1, 0, |_| {}).await;
    cluster
        .add_worker(|w| {
            w.threads = Some(1);
            w.name = Some("cli-worker".into());
        })
        .await
        .unwrap();
    let addr = cluster.coordinator_addrs()[0].clone();
    let client = cluster.client();
    common::synthetic_models(&client, &addr, &[("syn", 5)]).await;
    // Synthetic models are added by the CLI too; a real architecture refuses --cost-ms.
    let run = |mut all: Vec<String>| {
        all.extend(["--coordinators".to_string(), addr.clone()]);
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            idunno(&refs)
        })
    };
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let out = run(args(
        "model add cheap --arch synthetic --cost-ms 2 --weights generate",
    ))
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(args(
        "model add bad --arch resnet18 --cost-ms 2 --weights generate",
    ))
    .await
    .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );

    let job = common::synthetic_job(&client, "cheap", 24, 4, 1).await;
    // `job watch` follows the job to its end and says where it ended.
    let out = run(args(&format!("job watch {}", job.id))).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let watched = text(&out.stdout);
    assert!(watched.contains("24/24 done"), "{watched}");
    let stats: idunno_api::job::JobStats = client
        .get(&format!("/v1/jobs/{}/stats", job.id))
        .await
        .unwrap();
    let out = run(args(&format!("job stats {}", job.id))).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("24 done of 24"), "{shown}");
    let p99 = format!("{:.1}", stats.latency_ms.p99);
    assert!(row(&shown, "lease to result").contains(&p99), "{shown}");
    let out = run(args(&format!("job workers {}", job.id))).await.unwrap();
    let table = text(&out.stdout);
    let line = row(&table, "cli-worker");
    assert!(
        line.contains("no") && line.trim_end().ends_with("24"),
        "{table}"
    );
    cluster.shutdown().await;
}
