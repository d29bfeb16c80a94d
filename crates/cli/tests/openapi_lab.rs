//! The OpenAPI document the daemon serves, checked against the daemon
//! itself by schemathesis (property-based: generated requests, valid and
//! not, to every operation): no server error, and no answer that violates
//! the document (status, content type, body). Two lab nodes forming a
//! cluster, real TLS; schemathesis runs on the client host with an admin
//! API token. `HOLDFAST_SCHEMATHESIS` names its `st` (default: `st` on
//! the PATH; `.ci/run` installs it); `HOLDFAST_SEED` replays a run.

mod common;

use holdfast_lab::cluster::MirrorOptions;
use holdfast_lab::CLIENT;

const PORT: u16 = 9453;

#[test]
fn the_served_document_holds_for_generated_requests() {
    let st = std::env::var("HOLDFAST_SCHEMATHESIS").unwrap_or_else(|_| "st".into());
    let seed = common::env_number("HOLDFAST_SEED").unwrap_or_else(|| rand::random::<u32>().into());
    println!("schemathesis seed {seed} (HOLDFAST_SEED={seed} replays it)");
    let cluster = common::lab(MirrorOptions::default());
    let address = |host: &str| format!("{}:{PORT}", cluster.lab.address(host, 0).unwrap());
    let run = |host: &str, args: &[&str]| {
        let out = cluster
            .run_cli_checked(host, args)
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let init = run(
        "node1",
        &[
            "cluster",
            "init",
            "--name",
            "lab",
            "--address",
            &address("node1"),
        ],
    );
    let token = init
        .lines()
        .find_map(|l| l.trim().strip_prefix("holdfast cluster join "))
        .expect("an enrolment token")
        .to_string();
    run(
        "node2",
        &["cluster", "join", &token, "--address", &address("node2")],
    );
    let created = run(
        "node1",
        &[
            "token",
            "create",
            "--name",
            "schemathesis",
            "--role",
            "admin",
            "--expires-in",
            "1h",
        ],
    );
    let api_token = created
        .lines()
        .last()
        .expect("the token")
        .trim()
        .to_string();
    assert!(api_token.starts_with("hft_"), "{created}");
    let ca = cluster
        .lab
        .host_dir("node1")
        .unwrap()
        .join("etc-holdfast/pki/ca.pem");

    let url = format!("https://{}", address("node1"));
    let mut command = cluster.lab.command(CLIENT, &st).expect("client");
    command
        .args(["run", &format!("{url}/v1/openapi.json"), "--url", &url])
        .args(["--tls-verify", &ca.display().to_string()])
        .args(["-H", &format!("Authorization: Bearer {api_token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "25", "--seed", &seed.to_string(), "--workers", "1"])
        .args(["--request-timeout", "20"])
        // The token above, not generated Authorization headers.
        // The token above, not generated Authorization headers; and it
        // must not revoke it (it finds its id in GET /v1/tokens):
        // revocation is api_lab's.
        .args(["--generation-with-security-parameters", "false"])
        .args(["--exclude-path", "/v1/tokens/{id}"])
        // An endless stream has no end to check; api_lab reads it.
        .args(["--exclude-path", "/v1/events"])
        .env("NO_COLOR", "1");
    let out = command.output().unwrap_or_else(|e| {
        panic!("schemathesis ({st}) does not run: {e}; install it (`pip install schemathesis`, as .ci/run does) and set HOLDFAST_SCHEMATHESIS to its `st`")
    });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "schemathesis found violations (seed {seed})"
    );
    // It reached the operations: a run refused at the door (401 for
    // every case of an operation) or that tested nothing must not pass.
    assert!(
        !report.contains("401 Unauthorized ("),
        "operations never authenticated"
    );
    assert!(report.contains("Tested: 3"), "the operations were tested");
}
