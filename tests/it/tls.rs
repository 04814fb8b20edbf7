//! Security between machines: a cluster whose every listener serves TLS (certificates from
//! `idunno certs`) and whose every client trusts the cluster's CA runs a job end to end; plain
//! HTTP and unknown certificates are refused; the CLI reaches it at `https://…` with
//! `--tls-ca`. Credentials are checked alike over plain HTTP and TLS: the token on the client
//! API and `/v2` (401), the cluster secret on internal routes and membership changes (403),
//! health and metrics open.

use crate::common::{self, http_via, json, wait_done};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use idunno::embedded::EmbeddedCluster;
use idunno_api::Transport;
use idunno_server::tls::TlsOptions;
use reqwest::{Method, StatusCode};

const TOKEN: &str = "s3cret-token";
const SECRET: &str = "cluster-secret";

/// Makes a throwaway CA and node certificate in `dir`.
fn certs(dir: &Path) {
    idunno::certs::make(dir, &idunno::certs::LOCAL_HOSTS, false).unwrap();
}

/// A 3-coordinator cluster with one storage node and one worker, the token and the cluster
/// secret set, over TLS when `tls` names a certificate folder.
async fn secured_cluster(tls: Option<&Path>) -> (EmbeddedCluster, common::TestDir) {
    let tls = tls.map(TlsOptions::from_dir).unwrap_or_default();
    common::cluster(3, 1, 1, move |c| {
        c.token = Some(TOKEN.into());
        c.cluster_secret = Some(SECRET.into());
        c.tls = tls.clone();
    })
    .await
}

/// Asserts `status` and a JSON error body.
fn assert_refused(what: &str, (status, body): (StatusCode, Vec<u8>), want: StatusCode) {
    assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
    let body = json(&body);
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: no JSON error: {body}"
    );
}

/// The credential checks of every role, through `http` at `scheme`.
async fn credentials_are_checked(c: &EmbeddedCluster, http: &reqwest::Client, scheme: &str) {
    let coordinator = format!("{scheme}://{}", c.coordinator_addrs()[0]);
    let node = format!("{scheme}://{}", c.node_addr(0));
    let worker = format!(
        "{scheme}://{}",
        c.worker(0).expect("the worker runs").listen_addr()
    );
    let bearer = format!("Bearer {TOKEN}");
    let with_token = [("authorization", bearer.as_str())];
    let wrong_token = [("authorization", "Bearer guess")];
    let get = |url: String, headers: &'static [(&'static str, &'static str)]| {
        let http = http.clone();
        async move { http_via(&http, Method::GET, &url, headers, None).await }
    };

    // The token: the whole client API, /v1 and /v2.
    for path in ["/v1/jobs", "/v1/files", "/v2", "/v2/models/m1"] {
        let url = format!("{coordinator}{path}");
        assert_refused(
            &format!("{path} without a token"),
            get(url.clone(), &[]).await,
            StatusCode::UNAUTHORIZED,
        );
        assert_refused(
            &format!("{path} with a wrong token"),
            http_via(http, Method::GET, &url, &wrong_token, None).await,
            StatusCode::UNAUTHORIZED,
        );
    }
    let (status, _) = http_via(
        http,
        Method::GET,
        &format!("{coordinator}/v1/jobs"),
        &with_token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "/v1/jobs with the token");

    // Open: health, readiness, metrics, the inference protocol's probes.
    for path in ["/healthz", "/readyz", "/metrics", "/v2/health/live"] {
        let (status, _) = get(format!("{coordinator}{path}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "coordinator {path} is open");
    }
    for path in ["/healthz", "/metrics"] {
        let (status, _) = get(format!("{node}{path}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "storage node {path} is open");
        let (status, _) = get(format!("{worker}{path}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "worker {path} is open");
    }

    // The cluster secret: Raft, storage-node registration, a node's blobs; the token does not
    // stand in for it.
    for (method, url) in [
        (Method::POST, format!("{coordinator}/raft/vote")),
        (Method::POST, format!("{coordinator}/v1/nodes/register")),
        (Method::GET, format!("{node}/internal/blobs")),
    ] {
        assert_refused(
            &format!("{method} {url} without the secret"),
            http_via(
                http,
                method.clone(),
                &url,
                &with_token,
                Some(b"{}".to_vec()),
            )
            .await,
            StatusCode::FORBIDDEN,
        );
    }
    let (status, _) = http_via(
        http,
        Method::GET,
        &format!("{node}/internal/blobs"),
        &[(idunno_api::SECRET_HEADER, SECRET)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a node's blobs with the secret");

    // Membership changes: the secret or the token, nothing else.
    assert_refused(
        "adding a member without credentials",
        http_via(
            http,
            Method::POST,
            &format!("{coordinator}/v1/cluster/members"),
            &[("content-type", "application/json")],
            Some(br#"{"id": 9, "addr": "127.0.0.1:1"}"#.to_vec()),
        )
        .await,
        StatusCode::FORBIDDEN,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_are_checked_over_plain_http() {
    common::init_log();
    let (c, _dir) = secured_cluster(None).await;
    credentials_are_checked(&c, &reqwest::Client::new(), "http").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_runs_a_job_refuses_plain_http_and_checks_credentials() {
    common::init_log();
    let certs_dir = tempfile::tempdir().unwrap();
    certs(certs_dir.path());
    let (c, _dir) = secured_cluster(Some(certs_dir.path())).await;
    let ca = certs_dir.path().join("ca.pem");
    let trusting = Transport::tls_trusting_file(&ca)
        .unwrap()
        .client_builder()
        .build()
        .unwrap();
    let coordinator = c.coordinator_addrs()[0].clone();

    // Everything inside ran over TLS: storage node registration and heartbeats (the cluster
    // came up with its node alive), Raft among three coordinators, and now a job: inputs and
    // weights put through the coordinator to the storage node, the worker's leases, its
    // reads from the storage node and its results.
    let client = c.client();
    let base_url = format!("https://{coordinator}");
    common::synthetic_models_via(&trusting, &client, &base_url, Some(TOKEN), &[("syn", 5)]).await;
    let job = common::synthetic_job(&client, "syn", 12, 4, 1).await;
    wait_done(&client, job.id, Duration::from_secs(60)).await;
    common::assert_exactly_one_result_each(&client, job.id, 12).await;

    // A plain-HTTP client gets no answer from a TLS listener; nor does a TLS client that does
    // not trust the cluster's CA.
    for addr in [
        coordinator.clone(),
        c.node_addr(0),
        c.worker(0).unwrap().listen_addr().to_string(),
    ] {
        let plain = reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(plain.is_err(), "plain HTTP to {addr} was answered");
        let untrusting = reqwest::Client::new()
            .get(format!("https://{addr}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        assert!(
            untrusting.is_err(),
            "{addr} served a certificate the system trusts"
        );
    }

    credentials_are_checked(&c, &trusting, "https").await;

    // The CLI: `https://` and --tls-ca; without the CA it fails with one line.
    let cli = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idunno"));
        cmd.args(["job", "list", "--coordinators"])
            .arg(format!("https://{coordinator}"))
            .args(["--token", TOKEN])
            .args(extra)
            .env_remove("IDUNNO_COORDINATORS")
            .env_remove("IDUNNO_TLS_CA")
            .env_remove("IDUNNO_TOKEN");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let listed = cli(&["--tls-ca", ca.to_str().unwrap()]).await.unwrap();
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success() && out.contains("syn"),
        "idunno job list over TLS: {out} {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let refused = cli(&[]).await.unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "the CLI trusted an unknown CA");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    assert!(err.contains("error:"), "{err}");
    c.shutdown().await;
}

#[test]
fn nodes_refuse_half_a_tls_configuration_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let _cpu = common::cpu_shared_blocking();
    for (args, says) in [
        (vec!["--tls-cert", "cert.pem"], "--tls-cert needs --tls-key"),
        (vec!["--tls-ca", "ca.pem"], "--tls-ca needs --tls-cert"),
        (
            vec!["--tls-cert", "ca.pem", "--tls-key", "missing.pem"],
            "missing.pem",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_idunno"))
            .args([
                "coordinator",
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(dir.path().join("data"))
            .args(&args)
            .current_dir(dir.path())
            .env_remove("IDUNNO_TLS_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
