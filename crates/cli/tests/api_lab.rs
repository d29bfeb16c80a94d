//! The cluster's HTTPS API on three lab nodes with real daemons and real
//! TLS: init and join with enrolment tokens, users, sessions with CSRF,
//! API tokens (expired, revoked), roles refused and logged, bad input
//! naming its field and changing nothing, a node certificate of another CA
//! and a client without one refused, the relay, `-H '*' state` with a node
//! down, and certificate rotation. The client is curl on the lab's client
//! host, trusting the cluster's CA.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use holdfast_lab::cluster::{FarmOptions, MirrorLab, MirrorOptions};
use holdfast_lab::{wait_until, CLIENT};
use serde_json::{json, Value};

const PORT: u16 = 9453;

struct Api {
    cluster: MirrorLab,
    /// Files of the client host: the CA, cookie jars, certificates.
    dir: PathBuf,
}

impl Api {
    fn url(&self, host: &str, path: &str) -> String {
        let address = self.cluster.lab.address(host, 0).expect("address");
        format!("https://{address}:{PORT}{path}")
    }

    /// curl on the client host: (status, body as JSON or null).
    fn curl(&self, args: &[&str]) -> (u16, Value) {
        let mut command = self.cluster.lab.command(CLIENT, "curl").expect("client");
        command
            .args([
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(self.dir.join("ca.pem"))
            .args(args);
        let out = command.output().expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or(0);
        let body = serde_json::from_str(body).unwrap_or(Value::Null);
        (status, body)
    }

    /// A call with an API token.
    fn with_token(
        &self,
        token: &str,
        method: &str,
        host: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let auth = format!("Authorization: Bearer {token}");
        let url = self.url(host, path);
        let mut args = vec!["-X", method, "-H", &auth, &url];
        let text;
        if let Some(body) = body {
            text = body.to_string();
            args.extend(["-H", "content-type: application/json", "--data", &text]);
        }
        self.curl(&args)
    }

    /// Logs `user` in on `host`: the cookie jar's path and the CSRF token.
    fn login(&self, host: &str, user: &str, password: &str) -> (String, String) {
        let jar = self
            .dir
            .join(format!("{user}-{host}.jar"))
            .display()
            .to_string();
        let body = json!({"user": user, "password": password}).to_string();
        let url = self.url(host, "/v1/session");
        let (status, answer) = self.curl(&[
            "-c",
            &jar,
            "-H",
            "content-type: application/json",
            "--data",
            &body,
            &url,
        ]);
        assert_eq!(status, 200, "login of {user} on {host}: {answer}");
        let csrf = answer["csrf_token"]
            .as_str()
            .expect("csrf_token")
            .to_string();
        (jar, csrf)
    }

    /// A call in a session; `csrf` is sent when given.
    fn in_session(
        &self,
        jar: &str,
        csrf: Option<&str>,
        method: &str,
        host: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = self.url(host, path);
        let header = csrf.map(|c| format!("X-CSRF-Token: {c}"));
        let mut args = vec!["-b", jar, "-X", method, &url];
        if let Some(header) = &header {
            args.extend(["-H", header]);
        }
        let text;
        if let Some(body) = body {
            text = body.to_string();
            args.extend(["-H", "content-type: application/json", "--data", &text]);
        }
        self.curl(&args)
    }

    fn daemon_log(&self, host: &str) -> String {
        let path = self
            .cluster
            .lab
            .host_dir(host)
            .expect("dir")
            .join("daemon.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Waits until `host`'s daemon log has a line with every word.
    fn logged(&self, host: &str, words: &[&str]) -> bool {
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            self.daemon_log(host)
                .lines()
                .any(|l| words.iter().all(|w| l.contains(w)))
        })
    }

    fn cli(&self, host: &str, args: &[&str]) -> String {
        let out = self
            .cluster
            .run_cli_checked(host, args)
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli_json(&self, host: &str, args: &[&str]) -> Value {
        serde_json::from_str(&self.cli(host, args)).expect("JSON")
    }
}

/// The `holdfast cluster join …` line's token in `holdfast cluster init`
/// or `holdfast cluster token` output.
fn enrolment_token(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("holdfast cluster join "))
        .unwrap_or_else(|| panic!("no join line in {output}"))
        .to_string()
}

/// Three nodes with a farm module installed (not started), node1 the
/// cluster's CA, node2 and node3 joined.
fn three_nodes() -> (Api, String) {
    let cluster = common::lab(MirrorOptions {
        farm: Some(FarmOptions {
            powers: vec![1, 1, 1],
            rules: String::new(),
        }),
        ..MirrorOptions::default()
    });
    let dir = cluster
        .lab
        .host_dir(CLIENT)
        .expect("client dir")
        .join("api");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let api = Api { cluster, dir };
    let address = |host: &str| format!("{}:{PORT}", api.cluster.lab.address(host, 0).unwrap());
    let init = api.cli(
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
    let password = init
        .lines()
        .find_map(|l| {
            l.split_once("password: ")
                .map(|(_, p)| p.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no password in {init}"));
    let token = enrolment_token(&init);
    api.cli(
        "node2",
        &["cluster", "join", &token, "--address", &address("node2")],
    );
    // The token was for one node only.
    let again = api
        .cluster
        .cli(
            "node3",
            &["cluster", "join", &token, "--address", &address("node3")],
        )
        .unwrap();
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("unknown, used or expired enrolment token"),
        "{said}"
    );
    assert!(api.logged("node1", &["refused enrolment of \"node3\""]));
    let token = enrolment_token(&api.cli("node1", &["cluster", "token"]));
    api.cli(
        "node3",
        &["cluster", "join", &token, "--address", &address("node3")],
    );
    let ca = api
        .cluster
        .lab
        .host_dir("node1")
        .unwrap()
        .join("etc-holdfast/pki/ca.pem");
    std::fs::copy(ca, api.dir.join("ca.pem")).expect("the CA's certificate");
    (api, password)
}

#[test]
fn cluster_api_with_roles_relay_and_refusals() {
    let (mut api, password) = three_nodes();

    // Every node knows every member; node3's certificate is a year's.
    let members = |host: &str| {
        let status = api.cli_json(host, &["cluster", "status", "--json"]);
        let names: Vec<String> = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect();
        (names, status)
    };
    assert!(
        wait_until(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || members("node2").0.len() == 3
        ),
        "node2 learns of node3"
    );
    let (names, status) = members("node3");
    assert_eq!(names, ["node1", "node2", "node3"]);
    let days = status["certificate"]["days_left"].as_i64().unwrap();
    assert!((363..=365).contains(&days), "{status}");
    let state = api.cli("node3", &["state"]);
    assert!(state.contains("certificate of node3: 36"), "{state}");

    // No credentials: refused, and logged with the client's address.
    let client = api.cluster.lab.address(CLIENT, 0).unwrap().to_string();
    let (code, body) = api.curl(&[&api.url("node1", "/v1/modules")]);
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no credentials"),
        "{body}"
    );
    assert!(api.logged("node1", &["refused GET /v1/modules from", &client]));

    // The admin logs in; reads; a change needs the CSRF token.
    let (jar, csrf) = api.login("node1", "admin", &password);
    let (code, modules) = api.in_session(&jar, None, "GET", "node1", "/v1/modules", None);
    assert_eq!(code, 200);
    assert_eq!(modules[0]["module"], "demo");
    let watcher = json!({"name": "watcher", "role": "monitor", "password": "watching-all-day"});
    let (code, body) = api.in_session(
        &jar,
        None,
        "POST",
        "node1",
        "/v1/users",
        Some(watcher.clone()),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    let (code, body) = api.in_session(
        &jar,
        Some(&csrf),
        "POST",
        "node1",
        "/v1/users",
        Some(watcher),
    );
    assert_eq!(code, 201, "{body}");

    // Bad input names the field and changes nothing.
    let bad = json!({"name": "emperor", "role": "emperor", "password": "long enough password"});
    let (code, body) = api.in_session(&jar, Some(&csrf), "POST", "node1", "/v1/users", Some(bad));
    assert!((400..500).contains(&code), "{code} {body}");
    assert!(body["error"].as_str().unwrap().contains("role"), "{body}");
    let short = json!({"name": "shorty", "role": "monitor", "password": "short"});
    let (code, body) = api.in_session(&jar, Some(&csrf), "POST", "node1", "/v1/users", Some(short));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("password:"),
        "{body}"
    );
    let (_, users) = api.in_session(&jar, None, "GET", "node1", "/v1/users", None);
    let users: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["admin", "watcher"]);

    // The new user exists on node3 too, where it logs in; a monitor may
    // read but not command, and the refusal is logged with who and where.
    let (watch_jar, watch_csrf) = api.login("node3", "watcher", "watching-all-day");
    let (code, _) = api.in_session(&watch_jar, None, "GET", "node3", "/v1/modules/demo", None);
    assert_eq!(code, 200);
    let start = json!({"command": "start"});
    let (code, body) = api.in_session(
        &watch_jar,
        Some(&watch_csrf),
        "POST",
        "node3",
        "/v1/modules/demo/command",
        Some(start),
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("needs the control role"),
        "{body}"
    );
    assert!(api.logged(
        "node3",
        &[
            "refused POST /v1/modules/demo/command to watcher from",
            &client
        ]
    ));

    // API tokens: a control token commands (through the relay too); once
    // revoked or expired it is refused.
    let new_token = |role: &str, expires: &str| {
        let body = json!({"name": "test", "role": role, "expires_in": expires});
        let (code, token) =
            api.in_session(&jar, Some(&csrf), "POST", "node1", "/v1/tokens", Some(body));
        assert_eq!(code, 201, "{token}");
        (
            token["id"].as_str().unwrap().to_string(),
            token["token"].as_str().unwrap().to_string(),
        )
    };
    let (id, control) = new_token("control", "1h");
    let note = json!({"level": "Info", "message": "written through the relay"});
    let (code, body) = api.with_token(
        &control,
        "POST",
        "node1",
        "/v1/nodes/node2/v1/modules/demo/log",
        Some(note),
    );
    assert_eq!(code, 204, "{body}");
    let log = common::api_log(&api.cluster, "node2");
    assert!(log.contains("written through the relay"), "{log}");
    let (code, body) = api.with_token(&control, "GET", "node1", "/v1/nodes/node3/v1/node", None);
    assert_eq!(
        (code, body["node"].as_str()),
        (200, Some("node3")),
        "{body}"
    );
    let (code, _) = api.with_token(&control, "GET", "node2", "/v1/users", None);
    assert_eq!(code, 403, "a control token does not administer");
    let (code, _) = api.in_session(
        &jar,
        Some(&csrf),
        "DELETE",
        "node1",
        &format!("/v1/tokens/{id}"),
        None,
    );
    assert_eq!(code, 204);
    let revoked = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (code, body) = api.with_token(&control, "GET", "node2", "/v1/modules", None);
        code == 401
            && body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("unknown or revoked")
    });
    assert!(revoked, "the revoked token is refused on every node");
    let (_, short_lived) = new_token("monitor", "1s");
    let expired = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        let (code, body) = api.with_token(&short_lived, "GET", "node1", "/v1/modules", None);
        code == 401
            && body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("expired")
    });
    assert!(expired, "the token is refused once expired");

    // A client without a node certificate calling a node's route, and a
    // node certificate of another CA: refused and logged.
    let (_, admin_token) = new_token("admin", "1h");
    let (code, body) = api.with_token(&admin_token, "GET", "node2", "/v1/cluster/record", None);
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("node certificate"),
        "{body}"
    );
    assert!(api.logged(
        "node2",
        &["refused GET /v1/cluster/record", "from", &client]
    ));
    let foreign_ca = holdfast_pki::Authority::generate("foreign").unwrap();
    let (request, key) = holdfast_pki::SigningRequest::generate("node9").unwrap();
    let foreign = foreign_ca.sign(&request, "node9", &[]).unwrap();
    std::fs::write(api.dir.join("foreign.pem"), foreign).unwrap();
    std::fs::write(api.dir.join("foreign.key"), key).unwrap();
    let (cert, key) = (
        api.dir.join("foreign.pem").display().to_string(),
        api.dir.join("foreign.key").display().to_string(),
    );
    let (code, _) = api.curl(&[
        "--cert",
        &cert,
        "--key",
        &key,
        &api.url("node1", "/v1/cluster/record"),
    ]);
    assert_eq!(code, 0, "no HTTP answer: the handshake fails");
    assert!(api.logged("node1", &["refused TLS connection from", &client]));

    // The audit log names who did what from where, and the result.
    let (code, audit) = api.in_session(&jar, None, "GET", "node1", "/v1/audit", None);
    assert_eq!(code, 200);
    let entries = audit.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["who"] == "admin"
            && e["action"] == "POST /v1/users"
            && e["status"] == 201
            && e["source"].as_str().unwrap().starts_with(&client)),
        "{audit}"
    );
    assert!(
        entries.iter().any(
            |e| e["action"] == "POST /v1/nodes/node2/v1/modules/demo/log" && e["status"] == 204
        ),
        "{audit}"
    );

    // Rotation: node2 gets a new certificate; the relay to it still works.
    let before = members("node2").1["certificate"]["fingerprint"].clone();
    api.cli("node2", &["cluster", "rotate"]);
    let after = members("node2").1["certificate"]["fingerprint"].clone();
    assert_ne!(before, after);
    let (code, body) = api.with_token(
        &admin_token,
        "GET",
        "node1",
        "/v1/nodes/node2/v1/node",
        None,
    );
    assert_eq!(
        (code, body["node"].as_str()),
        (200, Some("node2")),
        "{body}"
    );

    // `-H '*' state` shows every node; with node3's daemon killed, node3
    // is unreachable and the others live.
    let all = api.cli_json("node2", &["-H", "*", "state", "--json"]);
    let reachable: Vec<(String, bool, usize)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["node"].as_str().unwrap().to_string(),
                v["reachable"].as_bool().unwrap(),
                v["modules"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        reachable,
        [
            ("node1".into(), true, 1),
            ("node2".into(), true, 1),
            ("node3".into(), true, 1)
        ]
    );
    api.cluster.kill("node3").expect("kill node3");
    let text = api.cli("node1", &["-H", "*", "state"]);
    // MODULE NODE STATE ...: each node's own line.
    let line = |node: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(node))
            .unwrap_or_default()
    };
    assert!(
        line("node1").starts_with("demo") && line("node2").starts_with("demo"),
        "{text}"
    );
    assert!(
        line("node3").contains("UNREACHABLE") && line("node3").contains("Connection refused"),
        "{text}"
    );
}

/// An operator's own CA: each node's certificate put in place by hand, no
/// enrolment token; the second node joins by its certificate; rotation
/// takes the replaced files, and refuses another CA's.
#[test]
fn operator_certificates() {
    let mut cluster = common::lab(MirrorOptions::default());
    let ca = holdfast_pki::Authority::generate("operator").unwrap();
    let place = |cluster: &MirrorLab, ca: &holdfast_pki::Authority, host: &str| {
        let address = cluster.lab.address(host, 0).unwrap();
        let (request, key) = holdfast_pki::SigningRequest::generate(host).unwrap();
        let certificate = ca.sign(&request, host, &[address.into()]).unwrap();
        let pki = cluster.lab.host_dir(host).unwrap().join("etc-holdfast/pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::write(pki.join("ca.pem"), ca.certificate_pem()).unwrap();
        std::fs::write(pki.join("node.pem"), &certificate).unwrap();
        std::fs::write(pki.join("node.key"), key).unwrap();
        holdfast_pki::certificate_facts(&certificate)
            .unwrap()
            .fingerprint
    };
    for host in ["node1", "node2"] {
        place(&cluster, &ca, host);
        cluster.terminate(host).expect("stop");
        cluster
            .start_daemon(host)
            .expect("start with the operator's certificates");
    }
    let api = Api {
        cluster,
        dir: PathBuf::new(),
    };
    let address = |host: &str| format!("{}:{PORT}", api.cluster.lab.address(host, 0).unwrap());
    let init = api.cli(
        "node1",
        &[
            "cluster",
            "init",
            "--name",
            "op",
            "--address",
            &address("node1"),
        ],
    );
    assert!(init.contains("holdfast cluster join --via"), "{init}");
    let refused = api.cluster.cli("node1", &["cluster", "token"]).unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("operator's"),
        "{said}"
    );
    api.cli(
        "node2",
        &[
            "cluster",
            "join",
            "--via",
            &address("node1"),
            "--address",
            &address("node2"),
        ],
    );
    let all = api.cli_json("node1", &["-H", "*", "state", "--json"]);
    let reachable: Vec<bool> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["reachable"].as_bool().unwrap())
        .collect();
    assert_eq!(reachable, [true, true], "{all}");

    let renewed = place(&api.cluster, &ca, "node2");
    api.cli("node2", &["cluster", "rotate"]);
    let status = api.cli_json("node2", &["cluster", "status", "--json"]);
    assert_eq!(status["certificate"]["fingerprint"], renewed.as_str());
    let relayed = api.cli("node1", &["-H", "node2", "module", "list"]);
    assert!(relayed.contains("demo"), "{relayed}");

    place(
        &api.cluster,
        &holdfast_pki::Authority::generate("another").unwrap(),
        "node2",
    );
    let refused = api.cluster.cli("node2", &["cluster", "rotate"]).unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("another CA"),
        "{said}"
    );
}

/// Behind a reverse proxy: every route under `base_path` (and at the root,
/// for the other nodes), the document naming it as its server, the session
/// cookie scoped to it.
#[test]
fn served_under_a_base_path() {
    let mut cluster = common::lab(MirrorOptions::default());
    let etc = cluster.lab.host_dir("node1").unwrap().join("etc-holdfast");
    std::fs::write(etc.join("api.toml"), "base_path = \"/holdfast\"\n").unwrap();
    cluster.terminate("node1").expect("stop");
    cluster.start_daemon("node1").expect("start with api.toml");
    let dir = cluster.lab.host_dir(CLIENT).unwrap().join("api");
    std::fs::create_dir_all(&dir).unwrap();
    let api = Api { cluster, dir };
    let address = format!("{}:{PORT}", api.cluster.lab.address("node1", 0).unwrap());
    let init = api.cli("node1", &["cluster", "init", "--address", &address]);
    let password = init
        .lines()
        .find_map(|l| {
            l.split_once("password: ")
                .map(|(_, p)| p.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no password in {init}"));
    std::fs::copy(etc.join("pki/ca.pem"), api.dir.join("ca.pem")).unwrap();

    let (code, document) = api.curl(&[&api.url("node1", "/holdfast/v1/openapi.json")]);
    assert_eq!(code, 200);
    assert_eq!(
        document["servers"][0]["url"], "/holdfast",
        "{}",
        document["servers"]
    );
    let (code, body) = api.curl(&[&api.url("node1", "/elsewhere/v1/openapi.json")]);
    assert_eq!(code, 404, "not under another path");
    assert!(body["error"].is_string(), "{body}");

    let jar = api.dir.join("admin.jar").display().to_string();
    let login = json!({"user": "admin", "password": password}).to_string();
    let url = api.url("node1", "/holdfast/v1/session");
    let (code, _) = api.curl(&[
        "-c",
        &jar,
        "-H",
        "content-type: application/json",
        "--data",
        &login,
        &url,
    ]);
    assert_eq!(code, 200);
    let cookies = std::fs::read_to_string(&jar).unwrap();
    let line = cookies
        .lines()
        .find(|l| l.contains("holdfast_session"))
        .unwrap_or_default();
    assert!(
        line.contains("\t/holdfast\t") && line.starts_with("#HttpOnly_"),
        "{cookies}"
    );
    let (code, modules) = api.curl(&["-b", &jar, &api.url("node1", "/holdfast/v1/modules")]);
    assert_eq!(
        (code, modules[0]["module"].as_str()),
        (200, Some("demo")),
        "{modules}"
    );
}

/// Events: any node streams every node's, each state change with its
/// cause chain; a client catches up with `since` or `Last-Event-ID`; a
/// node whose daemon dies is an event on the others; `holdfast events`
/// follows the stream.
#[test]
fn cluster_events_from_any_node() {
    let (mut api, password) = three_nodes();
    let (jar, csrf) = api.login("node1", "admin", &password);
    let body = json!({"name": "console", "role": "monitor", "expires_in": "1h"});
    let (code, token) =
        api.in_session(&jar, Some(&csrf), "POST", "node1", "/v1/tokens", Some(body));
    assert_eq!(code, 201, "{token}");
    let monitor = token["token"].as_str().unwrap().to_string();
    let (code, _) = api.curl(&[&api.url("node2", "/v1/events/recent")]);
    assert_eq!(code, 401, "events need a role");

    // `holdfast events --follow` on node1, started before anything happens.
    let mut follow = api
        .cluster
        .lab
        .command("node1", &api.cluster.executables().holdfast)
        .expect("node1");
    follow
        .args(["events", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut follower = follow.spawn().expect("holdfast events --follow");

    for host in ["node1", "node2", "node3"] {
        api.cli(host, &["start", "-m", "demo"]);
    }
    // node3 shows every node's settled start, each with its chain.
    let transitions = |host: &str, token: &str| -> Vec<Value> {
        let (code, events) = api.with_token(token, "GET", host, "/v1/events/recent", None);
        assert_eq!(code, 200, "{events}");
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "transition" && e["module"] == "demo")
            .cloned()
            .collect()
    };
    let up_on = |events: &[Value], node: &str| {
        events
            .iter()
            .any(|e| e["node"] == node && e["from"] == "STOP" && e["to"] == "UP")
    };
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            let seen = transitions("node3", &monitor);
            ["node1", "node2", "node3"].iter().all(|n| up_on(&seen, n))
        }),
        "node3 relays every node's start: {:?}",
        transitions("node3", &monitor)
    );
    let seen = transitions("node3", &monitor);
    let start = seen
        .iter()
        .find(|e| e["node"] == "node2" && e["to"] == "UP")
        .unwrap();
    let steps: Vec<&str> = start["cause"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps.first(), Some(&"command"), "{start}");
    assert!(steps.contains(&"decision"), "{start}");
    assert_eq!(steps.last(), Some(&"result"), "{start}");
    assert_eq!(start["result"], "ok", "{start}");
    assert!(start["duration_ms"].is_u64(), "{start}");
    let id = start["id"].as_str().unwrap().to_string();
    // node2's metrics: the UP series is 1, the others 0; one transition.
    let (code, _) = api.with_token(&monitor, "GET", "node2", "/metrics", None);
    assert_eq!(code, 200);
    let metrics = |host: &str| {
        let auth = format!("Authorization: Bearer {monitor}");
        let mut command = api.cluster.lab.command(CLIENT, "curl").expect("client");
        command
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(api.dir.join("ca.pem"))
            .args(["-H", &auth, &api.url(host, "/metrics")]);
        String::from_utf8_lossy(&command.output().expect("curl").stdout).into_owned()
    };
    let text = metrics("node2");
    for line in [
        "holdfast_module_state{module=\"demo\",node=\"node2\",state=\"UP\"} 1",
        "holdfast_module_state{module=\"demo\",node=\"node2\",state=\"STOP\"} 0",
        "holdfast_module_transitions_total{module=\"demo\",from=\"STOP\",to=\"UP\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    assert!(
        text.contains("holdfast_certificate_expiry_timestamp_seconds "),
        "{text}"
    );
    assert!(id.starts_with("node2-"), "{id}");

    // The stream: since a time, then after an id (what a reconnecting
    // client sends), with nothing repeated.
    let stream = |extra: &[&str], query: &str| -> Vec<Value> {
        let auth = format!("Authorization: Bearer {monitor}");
        let url = api.url("node1", &format!("/v1/events{query}"));
        let mut command = api.cluster.lab.command(CLIENT, "curl").expect("client");
        command
            .args(["-sN", "--max-time", "3", "--cacert"])
            .arg(api.dir.join("ca.pem"))
            .args(["-H", &auth])
            .args(extra)
            .arg(&url);
        let out = command.output().expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("an event is JSON"))
            .collect()
    };
    let all = stream(&[], "?since=0");
    let position = all.iter().position(|e| e["id"] == id.as_str()).unwrap();
    let header = format!("Last-Event-ID: {id}");
    let after = stream(&["-H", &header], "");
    let expected: Vec<&Value> = all[position + 1..].iter().collect();
    assert_eq!(after.iter().collect::<Vec<_>>(), expected);
    let mut ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "no event twice");

    // node2's stop reaches node1's follower, chain included.
    api.cli("node2", &["stop", "-m", "demo"]);
    let stopped = read_until(&mut follower, Duration::from_secs(30), |e| {
        e["node"] == "node2" && e["kind"] == "transition" && e["to"] == "STOP"
    });
    let _ = follower.kill();
    let _ = follower.wait();
    let stopped = stopped.expect("node1's `holdfast events --follow` shows node2's stop");
    assert!(
        stopped["cause"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["step"] == "script"),
        "{stopped}"
    );

    // node3's daemon dies: node1 says so in its timeline.
    api.cluster.kill("node3").expect("kill node3");
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            let (_, events) = api.with_token(&monitor, "GET", "node1", "/v1/events/recent", None);
            events.as_array().is_some_and(|a| {
                a.iter().any(|e| {
                    e["kind"] == "node_unreachable"
                        && e["reason"].as_str().unwrap_or_default().contains("node3")
                })
            })
        }),
        "node3's death is an event on node1"
    );
    // The human form names the chain.
    let text = api.cli("node1", &["events"]);
    assert!(text.contains("node_unreachable"), "{text}");
    assert!(text.contains("decision:"), "{text}");
}

/// Reads JSON lines of `child`'s output until one matches, within `limit`
/// (the reading is on a thread: the wait stays bounded).
fn read_until(
    child: &mut std::process::Child,
    limit: Duration,
    wanted: impl Fn(&Value) -> bool + Send + 'static,
) -> Option<Value> {
    use std::io::BufRead;
    let stdout = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                if wanted(&event) {
                    let _ = tx.send(event);
                    return;
                }
            }
        }
    });
    rx.recv_timeout(limit).ok()
}
