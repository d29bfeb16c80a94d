//! The native TOML format: parsing, defaults, every error's position, round trip.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use holdfast_config::*;

const FILE: &str = "/etc/holdfast/web.toml";

const FULL: &str = r#"[module]
name = "web"
mode = "mirror"
failover = false
default_primary = "node1"
swap_back = false
boot = "on"
maxloop = 5
loop_interval = "12h"

[heartbeat]
port = 4900
pulse = "500ms"
timeout = "10s"
networks = ["default", "repli"]

[[node]]
name = "node1"
address = { default = "198.18.0.11", repli = "10.0.0.1" }

[[node]]
name = "node2"
address = { default = "198.18.0.12", repli = "10.0.0.2" }

[scripts]
directory = "bin"
start_timeout = "2m"
stop_timeout = "30s"
force_stop_timeout = "10s"
logging = false
[scripts.env]
APP_PORT = "8080"
"#;

const MINIMAL: &str = r#"[module]
name = "web"
mode = "mirror"

[[node]]
name = "node1"
address = { default = "198.18.0.11" }

[[node]]
name = "node2"
address = { default = "198.18.0.12" }
"#;

fn parse(text: &str) -> Result<ModuleConfig, ConfigError> {
    parse_module(text, Path::new(FILE))
}

/// Parses `text`, which must fail, and returns the error.
fn error(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected an error, parsed {config:?}"),
        Err(e) => {
            assert_eq!(e.file, PathBuf::from(FILE));
            e
        }
    }
}

/// Asserts the error of `text` is at `line`:`column` on `field`, and that its
/// message contains `message`.
#[track_caller]
fn assert_error(text: &str, line: usize, column: usize, field: &str, message: &str) {
    let e = error(text);
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (line, column, field),
        "error was: {e}"
    );
    assert!(
        e.message.contains(message),
        "message {:?} lacks {message:?}",
        e.message
    );
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

#[test]
fn full_example_parses() {
    let c = parse(FULL).expect("valid");
    assert_eq!(c.name, "web");
    assert_eq!(c.mode, Mode::Mirror);
    assert!(!c.failover);
    assert_eq!(c.default_primary, DefaultPrimary::Node("node1".into()));
    assert!(!c.swap_back);
    assert_eq!(c.boot, Boot::On);
    assert_eq!(c.maxloop, 5);
    assert_eq!(c.loop_interval, Duration::from_secs(12 * 3600));
    assert_eq!(c.heartbeat.port, 4900);
    assert_eq!(c.heartbeat.pulse, Duration::from_millis(500));
    assert_eq!(c.heartbeat.timeout, Duration::from_secs(10));
    assert_eq!(c.heartbeat.networks, ["default", "repli"]);
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.nodes[1].name, "node2");
    assert_eq!(c.nodes[1].addresses["repli"], ip("10.0.0.2"));
    assert_eq!(c.scripts.directory, Some(PathBuf::from("bin")));
    assert_eq!(c.scripts.start_timeout, Duration::from_secs(120));
    assert_eq!(c.scripts.stop_timeout, Duration::from_secs(30));
    assert_eq!(c.scripts.force_stop_timeout, Duration::from_secs(10));
    assert!(!c.scripts.logging);
    assert_eq!(
        c.scripts.env,
        BTreeMap::from([("APP_PORT".to_string(), "8080".to_string())])
    );
    assert_eq!(c.node("node1").map(|n| n.name.as_str()), Some("node1"));
    assert_eq!(c.peer_of("node1").map(|n| n.name.as_str()), Some("node2"));
    assert_eq!(c.peer_of("node2").map(|n| n.name.as_str()), Some("node1"));
    assert!(c.peer_of("node3").is_none());
    assert!(c.node("node3").is_none());
}

#[test]
fn defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert!(c.failover);
    assert_eq!(c.default_primary, DefaultPrimary::Alone);
    assert!(c.swap_back);
    assert_eq!(c.boot, Boot::Auto);
    assert_eq!(c.maxloop, DEFAULT_MAXLOOP);
    assert_eq!(c.maxloop, 3);
    assert_eq!(c.loop_interval, Duration::from_secs(24 * 3600));
    assert_eq!(
        c.heartbeat,
        HeartbeatConfig {
            port: DEFAULT_PORT,
            pulse: Duration::from_millis(700),
            timeout: Duration::from_secs(30),
            networks: vec!["default".into()],
        }
    );
    assert_eq!(
        c.scripts,
        ScriptsConfig {
            directory: None,
            start_timeout: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(300),
            force_stop_timeout: Duration::from_secs(300),
            logging: true,
            env: BTreeMap::new(),
        }
    );
}

#[test]
fn round_trip() {
    for text in [FULL, MINIMAL] {
        let c = parse(text).expect("valid");
        let rendered = to_toml(&c);
        let back = parse(&rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
        assert_eq!(back, c, "{rendered}");
        assert_eq!(to_toml(&back), rendered);
    }
    println!("{}", to_toml(&parse(FULL).unwrap()));
}

/// `MINIMAL` with `from` replaced by `to` (which must occur).
fn minimal_with(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from:?} not in MINIMAL");
    MINIMAL.replacen(from, to, 1)
}

/// `MINIMAL` with `extra` inserted after line 3 (the end of `[module]`).
fn minimal_plus_module(extra: &str) -> String {
    minimal_with(
        "mode = \"mirror\"\n",
        &format!("mode = \"mirror\"\n{extra}\n"),
    )
}

/// `MINIMAL` with a `[heartbeat]` table starting at line 12.
fn minimal_plus(table: &str) -> String {
    format!("{MINIMAL}{table}")
}

#[test]
fn bare_integer_duration_is_rejected_with_the_promised_message() {
    let text = minimal_plus("[heartbeat]\npulse = 700\n");
    let e = error(&text);
    assert_eq!((e.line, e.column), (13, 9));
    assert_eq!(e.field, "heartbeat.pulse");
    assert_eq!(
        e.to_string(),
        "/etc/holdfast/web.toml:13:9: heartbeat.pulse: expected a duration with a unit, like \"700ms\", found 700"
    );
}

#[test]
fn duration_errors() {
    let text = minimal_plus("[heartbeat]\ntimeout = \"30\"\n");
    assert_error(&text, 13, 11, "heartbeat.timeout", "found \"30\"");
    let text = minimal_plus("[heartbeat]\ntimeout = \"30 parsecs\"\n");
    assert_error(&text, 13, 11, "heartbeat.timeout", "unknown time unit");
    let text = minimal_plus_module("loop_interval = 24");
    assert_error(&text, 4, 17, "module.loop_interval", "found 24");
    let text = minimal_plus("[scripts]\nstop_timeout = true\n");
    assert_error(&text, 13, 16, "scripts.stop_timeout", "found true");
}

#[test]
fn syntax_errors_carry_a_position() {
    let e = error("[module]\nname = \"web\nmode = \"mirror\"\n");
    assert_eq!(e.line, 2);
    assert!(e.column > 1);
    assert_eq!(e.field, "");
    assert!(e.to_string().starts_with(&format!("{FILE}:2:")), "{e}");
    // A key given twice is a TOML error too.
    let e = error(&minimal_plus_module("mode = \"mirror\""));
    assert_eq!((e.line, e.field.as_str()), (4, ""));
}

#[test]
fn unknown_keys_are_named() {
    assert_error(
        &minimal_plus_module("nmae = \"x\""),
        4,
        1,
        "module.nmae",
        "unknown key \"nmae\"",
    );
    assert_error(
        &minimal_plus("[heartbeat]\npulses = \"1s\"\n"),
        13,
        1,
        "heartbeat.pulses",
        "unknown key",
    );
    assert_error(
        &minimal_plus("[scripts]\nenv_vars = {}\n"),
        13,
        1,
        "scripts.env_vars",
        "unknown key",
    );
    assert_error(
        &minimal_plus("[services]\n"),
        12,
        2,
        "services",
        "unknown key \"services\"",
    );
    assert_error(
        &minimal_with("name = \"node2\"", "name = \"node2\"\nip = \"1.2.3.4\""),
        11,
        1,
        "node[1].ip",
        "unknown key \"ip\"",
    );
}

#[test]
fn missing_keys_point_at_their_table() {
    assert_error(
        &minimal_with("name = \"web\"\n", ""),
        1,
        1,
        "module.name",
        "required",
    );
    assert_error(
        &minimal_with("mode = \"mirror\"\n", ""),
        1,
        1,
        "module.mode",
        "required",
    );
    assert_error(
        &minimal_with("[module]\nname = \"web\"\nmode = \"mirror\"\n", ""),
        1,
        1,
        "module",
        "required",
    );
    assert_error(
        &minimal_with("name = \"node2\"\n", ""),
        9,
        1,
        "node[1].name",
        "required",
    );
    assert_error(
        &minimal_with("address = { default = \"198.18.0.11\" }\n", ""),
        5,
        1,
        "node[0].address",
        "required",
    );
    assert_error(
        "[module]\nname = \"web\"\nmode = \"mirror\"\n",
        1,
        1,
        "node",
        "required",
    );
}

#[test]
fn wrong_types() {
    assert_error(
        &minimal_plus_module("failover = \"yes\""),
        4,
        12,
        "module.failover",
        "expected true or false, found \"yes\"",
    );
    assert_error(
        &minimal_with("name = \"web\"", "name = 7"),
        2,
        8,
        "module.name",
        "expected a string, found 7",
    );
    assert_error(
        &minimal_plus_module("maxloop = -1"),
        4,
        11,
        "module.maxloop",
        "found -1",
    );
    assert_error(
        &minimal_plus("[heartbeat]\nnetworks = \"default\"\n"),
        13,
        12,
        "heartbeat.networks",
        "expected an array of strings",
    );
    assert_error(
        &minimal_plus("[heartbeat]\nnetworks = [\"default\", 2]\n"),
        13,
        24,
        "heartbeat.networks[1]",
        "expected a string, found 2",
    );
    assert_error(
        &format!("heartbeat = 3\n{MINIMAL}"),
        1,
        13,
        "heartbeat",
        "expected a table, found 3",
    );
    assert_error(
        "node = 3\n[module]\nname = \"web\"\nmode = \"mirror\"\n",
        1,
        8,
        "node",
        "expected [[node]] tables",
    );
    assert_error(
        &minimal_plus("[scripts.env]\nCOUNT = 3\n"),
        13,
        9,
        "scripts.env.COUNT",
        "expected a string, found 3",
    );
}

#[test]
fn module_values() {
    assert_error(
        &minimal_with("\"mirror\"", "\"light\""),
        3,
        8,
        "module.mode",
        "not supported yet",
    );
    assert_error(
        &minimal_with("\"mirror\"", "\"mirrror\""),
        3,
        8,
        "module.mode",
        "unknown mode",
    );
    assert_error(
        &minimal_with("\"web\"", "\"web site\""),
        2,
        8,
        "module.name",
        "invalid module name",
    );
    assert_error(
        &minimal_plus_module("boot = \"sometimes\""),
        4,
        8,
        "module.boot",
        "expected \"on\", \"off\" or \"auto\"",
    );
    assert_error(
        &minimal_plus_module("default_primary = \"node3\""),
        4,
        19,
        "module.default_primary",
        "\"node3\" is not a node of this module (nodes: node1, node2)",
    );
    // swap_back only goes with a preferred node.
    assert_error(
        &minimal_plus_module("swap_back = false"),
        4,
        13,
        "module.swap_back",
        "only applies",
    );
    assert_error(
        &minimal_plus_module("default_primary = \"lastprim\"\nswap_back = true"),
        5,
        13,
        "module.swap_back",
        "only applies",
    );
    let c = parse(&minimal_plus_module("default_primary = \"lastprim\"")).expect("valid");
    assert_eq!(c.default_primary, DefaultPrimary::LastPrim);
    let c = parse(&minimal_plus_module("default_primary = \"node2\"")).expect("valid");
    assert_eq!(c.default_primary, DefaultPrimary::Node("node2".into()));
    assert!(c.swap_back, "swap_back defaults to true");
}

#[test]
fn heartbeat_values() {
    assert_error(
        &minimal_plus("[heartbeat]\nport = 0\n"),
        13,
        8,
        "heartbeat.port",
        "between 1 and 65535, found 0",
    );
    assert_error(
        &minimal_plus("[heartbeat]\nport = 70000\n"),
        13,
        8,
        "heartbeat.port",
        "found 70000",
    );
    assert_error(
        &minimal_plus("[heartbeat]\npulse = \"1s\"\ntimeout = \"1500ms\"\n"),
        14,
        11,
        "heartbeat.timeout",
        "the timeout (1500ms) must be at least twice the pulse (1s)",
    );
    // With the timeout left at its default, the table is pointed at.
    assert_error(
        &minimal_plus("[heartbeat]\npulse = \"20s\"\n"),
        12,
        1,
        "heartbeat.timeout",
        "at least twice",
    );
    assert_error(
        &minimal_plus("[heartbeat]\npulse = \"0s\"\n"),
        13,
        9,
        "heartbeat.pulse",
        "greater than zero",
    );
    assert_error(
        &minimal_plus("[heartbeat]\nnetworks = []\n"),
        13,
        12,
        "heartbeat.networks",
        "at least one",
    );
    assert_error(
        &minimal_plus("[heartbeat]\nnetworks = [\"default\", \"default\"]\n"),
        13,
        24,
        "heartbeat.networks[1]",
        "listed twice",
    );
    assert_error(
        &minimal_plus("[heartbeat]\nnetworks = [\"default\", \"\"]\n"),
        13,
        24,
        "heartbeat.networks[1]",
        "cannot be empty",
    );
}

const NODE3: &str = "\n[[node]]\nname = \"node3\"\naddress = { default = \"198.18.0.13\" }\n";

#[test]
fn node_rules() {
    assert_error(
        &format!("{MINIMAL}{NODE3}"),
        13,
        1,
        "node[2]",
        "exactly 2 nodes, found 3",
    );
    let one = minimal_with(
        "\n[[node]]\nname = \"node2\"\naddress = { default = \"198.18.0.12\" }\n",
        "",
    );
    assert_error(&one, 5, 1, "node", "exactly 2 nodes, found 1");
    assert_error(
        &minimal_with("\"node2\"", "\"node1\""),
        10,
        8,
        "node[1].name",
        "used twice",
    );
    assert_error(
        &minimal_with("\"node1\"", "\"node 1\""),
        6,
        8,
        "node[0].name",
        "invalid node name",
    );
    assert_error(
        &minimal_with("\"198.18.0.12\"", "\"198.18.0.11\""),
        11,
        23,
        "node[1].address.default",
        "address 198.18.0.11 is already used by node[0].address.default",
    );
    assert_error(
        &minimal_with("\"198.18.0.11\"", "\"198.18.0.300\""),
        7,
        23,
        "node[0].address.default",
        "expected an IP address, found \"198.18.0.300\"",
    );
    assert_error(
        &minimal_with("\"198.18.0.11\"", "\"0.0.0.0\""),
        7,
        23,
        "node[0].address.default",
        "cannot be a node address",
    );
    // An address on a network that is not a heartbeat network.
    assert_error(
        &minimal_with(
            "default = \"198.18.0.11\"",
            "default = \"198.18.0.11\", repli = \"10.0.0.1\"",
        ),
        7,
        46,
        "node[0].address.repli",
        "\"repli\" is not a heartbeat network",
    );
    // A heartbeat network without an address: reported at the address table.
    let text = minimal_plus("[heartbeat]\nnetworks = [\"default\", \"repli\"]\n");
    assert_error(
        &text,
        7,
        11,
        "node[0].address",
        "missing the address of node \"node1\" on heartbeat network \"repli\"",
    );
    // [node.address] sub-tables and IPv6 work as well.
    let text = MINIMAL.replacen(
        "address = { default = \"198.18.0.11\" }",
        "[node.address]\ndefault = \"fd00::11\"",
        1,
    );
    let c = parse(&text).expect("valid");
    assert_eq!(c.nodes[0].addresses["default"], ip("fd00::11"));
}

#[test]
fn scripts_rules() {
    assert_error(
        &minimal_plus("[scripts.env]\n2BAD = \"x\"\n"),
        13,
        8,
        "scripts.env.2BAD",
        "not a valid environment variable name",
    );
    assert_error(
        &minimal_plus("[scripts.env]\n\"A-B\" = \"x\"\n"),
        13,
        9,
        "scripts.env.A-B",
        "not a valid environment variable name",
    );
    assert_error(
        &minimal_plus("[scripts]\nstart_timeout = \"0s\"\n"),
        13,
        17,
        "scripts.start_timeout",
        "greater than zero",
    );
    assert_error(
        &minimal_plus("[scripts]\ndirectory = \"\"\n"),
        13,
        13,
        "scripts.directory",
        "cannot be empty",
    );
}

#[test]
fn load_module_reads_files_and_reports_unreadable_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("web.toml");
    std::fs::write(&path, FULL).expect("write");
    assert_eq!(
        load_module(&path).expect("valid"),
        parse(FULL).expect("valid")
    );

    std::fs::write(&path, minimal_plus("[heartbeat]\npulse = 700\n")).expect("write");
    let e = load_module(&path).expect_err("invalid");
    assert_eq!(
        (e.file.as_path(), e.line, e.column),
        (path.as_path(), 13, 9)
    );

    let missing = dir.path().join("missing.toml");
    let e = load_module(&missing).expect_err("missing");
    assert_eq!(
        (e.file.as_path(), e.line, e.column),
        (missing.as_path(), 0, 0)
    );
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read the file", missing.display())),
        "{e}"
    );
}

#[test]
fn fingerprint_ignores_only_the_scripts_directory() {
    let c = parse(FULL).expect("valid");
    let mut moved = c.clone();
    moved.scripts.directory = Some(PathBuf::from("/opt/web/bin"));
    assert_eq!(c.fingerprint(), moved.fingerprint());
    let mut changed = c.clone();
    changed.heartbeat.pulse = Duration::from_millis(600);
    assert_ne!(c.fingerprint(), changed.fingerprint());
    let mut env = c.clone();
    env.scripts.env.insert("X".into(), "1".into());
    assert_ne!(c.fingerprint(), env.fingerprint());
    assert_eq!(c.fingerprint_hex().len(), 64);
    assert_eq!(
        c.fingerprint_hex(),
        parse(&to_toml(&c)).expect("valid").fingerprint_hex()
    );
}

#[test]
fn validate_rejects_keyword_node_as_default_primary() {
    let mut c = parse(MINIMAL).expect("valid");
    c.nodes[0].name = "alone".into();
    c.default_primary = DefaultPrimary::Node("alone".into());
    let e = c.validate().expect_err("ambiguous");
    assert_eq!(e.field, "module.default_primary");
}

#[test]
fn vip_and_health_parse_round_trip_and_default() {
    let text = minimal_plus("[vip]\naddress = \"198.18.0.50\"\n\n[health]\nport = 9010\n");
    let config = parse(&text).unwrap();
    let vip = config.vip.clone().expect("vip");
    assert_eq!(
        (vip.address.to_string().as_str(), vip.prefix, vip.interface),
        ("198.18.0.50", 32, None)
    );
    assert_eq!(config.health, Some(HealthConfig { port: 9010 }));
    assert_eq!(parse(&to_toml(&config)).unwrap(), config);
    assert_eq!(parse(MINIMAL).unwrap().vip, None);
}

#[test]
fn vip_and_health_errors_are_placed() {
    // Line 12 is the first line after MINIMAL.
    assert_error(
        &minimal_plus("[vip]\naddress = \"198.18.0.11\"\n"),
        13,
        11,
        "vip.address",
        "is an address of node node1",
    );
    assert_error(
        &minimal_plus("[vip]\naddress = \"web.example\"\n"),
        13,
        11,
        "vip.address",
        "expected an IPv4 address",
    );
    assert_error(
        &minimal_plus("[vip]\naddress = \"198.18.0.50\"\nprefix = 33\n"),
        14,
        10,
        "vip.prefix",
        "between 1 and 32",
    );
    assert_error(
        &minimal_plus("[vip]\nadress = \"198.18.0.50\"\n"),
        13,
        1,
        "vip.adress",
        "unknown",
    );
    assert_error(
        &minimal_plus("[health]\nport = 4800\n"),
        13,
        8,
        "health.port",
        "heartbeat port",
    );
}

#[test]
fn checkers_parse_with_safekit_defaults_and_round_trip() {
    let text = minimal_plus(
        r#"[[checker]]
name = "app"
type = "process"
command = "sample-app"
action = "restart"

[[checker]]
name = "web"
type = "tcp"
address = "198.18.0.11"
port = 8080
send = ""
expect = "node"
interval = "1s"
timeout = "500ms"

[[checker]]
name = "gateway"
type = "ping"
address = "198.18.0.1"
"#,
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.checkers.len(), 3);
    assert_eq!(config.checkers[0].resource(), "proc.app");
    assert_eq!(
        config.checkers[0].action,
        holdfast_config::checker::Action::Restart
    );
    assert_eq!(config.checkers[1].interval, Duration::from_secs(1));
    assert_eq!(
        config.checkers[2].when,
        holdfast_config::checker::When::Pre,
        "ping defaults to a resource checker"
    );
    assert_eq!(parse(&to_toml(&config)).unwrap(), config);
}

#[test]
fn checker_errors_are_placed() {
    assert_error(
        &minimal_plus("[[checker]]\nname = \"x\"\ntype = \"telepathy\"\n"),
        14,
        8,
        "checker[0].type",
        "unknown checker type",
    );
    assert_error(
        &minimal_plus(
            "[[checker]]\nname = \"x\"\ntype = \"ping\"\naddress = \"198.18.0.1\"\nport = 80\n",
        ),
        16,
        1,
        "checker[0].port",
        "unknown key \"port\"; expected one of: name, type",
    );
    assert_error(
        &minimal_plus("[[checker]]\nname = \"x\"\ntype = \"process\"\n"),
        12,
        1,
        "checker[0].command",
        "",
    );
}

#[test]
fn replication_parses_round_trips_and_defaults() {
    let text = minimal_plus(
        "[replication]\nack = \"durable\"\n\n[[replicated]]\ndir = \"/srv/app/data\"\n\n[[replicated]]\ndir = \"/srv/app/logs\"\n",
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.replication.ack, AckPolicy::Durable);
    assert_eq!(config.replication.port, None);
    assert_eq!(config.replication.ack_timeout, Duration::from_secs(5));
    assert_eq!(
        config.replication.on_secondary_failure,
        OnSecondaryFailure::Degrade
    );
    assert_eq!(config.replication_port(0), config.heartbeat.port + 1);
    assert_eq!(config.replication_port(1), config.heartbeat.port + 2);
    assert_eq!(
        config.replicated,
        vec![
            ReplicatedDir {
                dir: "/srv/app/data".into(),
                ..Default::default()
            },
            ReplicatedDir {
                dir: "/srv/app/logs".into(),
                ..Default::default()
            },
        ]
    );
    let rendered = to_toml(&config);
    assert_eq!(parse(&rendered).unwrap(), config, "{rendered}");
    let blocking = parse(&minimal_plus(
        "[replication]\nack_timeout = \"1500ms\"\non_secondary_failure = \"block\"\n\n[[replicated]]\ndir = \"/srv/a\"\n",
    ))
    .unwrap();
    assert_eq!(
        blocking.replication.ack_timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(
        blocking.replication.on_secondary_failure,
        OnSecondaryFailure::Block
    );
    assert_eq!(parse(&to_toml(&blocking)).unwrap(), blocking);
    assert_eq!(config.replication.durability, DurabilityPolicy::SyncCalls);
    let strict = parse(&minimal_plus(
        "[replication]\ndurability = \"every_call\"\nmax_unacked_bytes = \"8 MiB\"\nmax_unacked_age = \"250ms\"\n\n[[replicated]]\ndir = \"/srv/a\"\n",
    ))
    .unwrap();
    assert_eq!(strict.replication.durability, DurabilityPolicy::EveryCall);
    assert_eq!(strict.replication.max_unacked_bytes, 8 << 20);
    assert_eq!(
        strict.replication.max_unacked_age,
        Duration::from_millis(250)
    );
    assert_eq!(parse(&to_toml(&strict)).unwrap(), strict);
    let bytes = parse(&minimal_plus(
        "[replication]\nmax_unacked_bytes = 4096\n\n[[replicated]]\ndir = \"/srv/a\"\n",
    ))
    .unwrap();
    assert_eq!(bytes.replication.max_unacked_bytes, 4096);
    let minimal = parse(MINIMAL).unwrap();
    assert!(minimal.replicated.is_empty());
    assert_eq!(minimal.replication, ReplicationConfig::default());
    assert!(!to_toml(&minimal).contains("replica"));
}

#[test]
fn exclusions_of_a_replicated_directory_round_trip_and_bad_ones_are_placed() {
    let config = parse(&minimal_plus(
        "[[replicated]]\ndir = \"/srv/a\"\nexclude = [\"logs\", \"cache/tmp\"]\nexclude_names = ['\\.tmp$', '^core$']\n",
    ))
    .unwrap();
    assert_eq!(
        config.replicated,
        vec![ReplicatedDir {
            dir: "/srv/a".into(),
            exclude: vec!["logs".into(), "cache/tmp".into()],
            exclude_names: vec![r"\.tmp$".into(), "^core$".into()],
        }]
    );
    let rendered = to_toml(&config);
    assert_eq!(parse(&rendered).unwrap(), config, "{rendered}");
    // Line 12 is the first line after MINIMAL.
    assert_error(
        &minimal_plus("[[replicated]]\ndir = \"/srv/a\"\nexclude = [\"ok\", \"/srv/a/logs\"]\n"),
        14,
        18,
        "replicated[0].exclude[1]",
        "relative to /srv/a",
    );
    assert_error(
        &minimal_plus("[[replicated]]\ndir = \"/srv/a\"\nexclude = [\"../b\"]\n"),
        14,
        12,
        "replicated[0].exclude[0]",
        "without . or ..",
    );
    assert_error(
        &minimal_plus("[[replicated]]\ndir = \"/srv/a\"\nexclude_names = [\"(tmp\"]\n"),
        14,
        18,
        "replicated[0].exclude_names[0]",
        "not a regular expression",
    );
}

#[test]
fn replication_errors_are_placed() {
    // Line 12 is the first line after MINIMAL.
    assert_error(
        &minimal_plus("[[replicated]]\ndir = \"srv/data\"\n"),
        13,
        7,
        "replicated[0].dir",
        "absolute",
    );
    assert_error(
        &minimal_plus("[[replicated]]\ndir = \"/srv/a\"\n\n[[replicated]]\ndir = \"/srv/a\"\n"),
        16,
        7,
        "replicated[1].dir",
        "already replicated[0]",
    );
    assert_error(
        &minimal_plus("[[replicated]]\ndir = \"/srv/a\"\n\n[[replicated]]\ndir = \"/srv/a/b\"\n"),
        16,
        7,
        "replicated[1].dir",
        "nested",
    );
    assert_error(
        &minimal_plus("[replication]\nport = 4800\n\n[[replicated]]\ndir = \"/srv/a\"\n"),
        13,
        8,
        "replication.port",
        "heartbeat port",
    );
    assert_error(
        &minimal_plus("[replication]\nack = \"sync\"\n"),
        13,
        7,
        "replication.ack",
        "receipt",
    );
    assert_error(
        &minimal_plus("[replication]\non_secondary_failure = \"wait\"\n"),
        13,
        24,
        "replication.on_secondary_failure",
        "\"degrade\" or \"block\"",
    );
    assert_error(
        &minimal_plus("[replication]\ndurability = \"always\"\n"),
        13,
        14,
        "replication.durability",
        "\"sync_calls\" or \"every_call\"",
    );
    for bad in ["\"64MB\"", "0", "-1", "\"lots\""] {
        assert_error(
            &minimal_plus(&format!("[replication]\nmax_unacked_bytes = {bad}\n")),
            13,
            21,
            "replication.max_unacked_bytes",
            if bad == "0" {
                "more than 0"
            } else {
                "size in bytes"
            },
        );
    }
    assert_error(
        &minimal_plus("[replication]\nmax_unacked_age = \"0s\"\n"),
        13,
        19,
        "replication.max_unacked_age",
        "more than 0",
    );
    assert_error(
        &minimal_plus("[replication]\nack_timeout = \"0s\"\n"),
        13,
        15,
        "replication.ack_timeout",
        "more than 0",
    );
    assert_error(
        &minimal_plus("[[replicated]]\ndirectory = \"/srv/a\"\n"),
        13,
        1,
        "replicated[0].directory",
        "unknown",
    );
    let e = error(&minimal_plus(
        "[health]\nport = 4801\n\n[[replicated]]\ndir = \"/srv/a\"\n",
    ));
    assert!(e.message.contains("health port"), "{e}");
}

const FARM: &str = r#"[module]
name = "web"
mode = "farm"

[heartbeat]
pulse = "100ms"
timeout = "1s"

[[node]]
name = "node1"
address = { default = "198.18.0.11" }
power = 2

[[node]]
name = "node2"
address = { default = "198.18.0.12" }

[[node]]
name = "node3"
address = { default = "198.18.0.13" }
power = 0

[vip]
address = "198.18.0.50"
vmac = "5a:fe:00:00:00:01"

[[load_balancing]]
protocol = "tcp"
port = 80
by = "client_ip"

[[load_balancing]]
protocol = "udp"
by = "client_ip_port"
"#;

#[test]
fn farm_modules() {
    let c = parse(FARM).unwrap();
    assert_eq!(c.mode, Mode::Farm);
    let powers: Vec<u32> = c.nodes.iter().map(|n| n.power).collect();
    assert_eq!(powers, [2, 1, 0]);
    let vip = c.vip.clone().unwrap();
    assert_eq!(vip.vmac, Some([0x5a, 0xfe, 0, 0, 0, 1]));
    assert_eq!(vip.farm_mac(), [0x5a, 0xfe, 0, 0, 0, 1]);
    let default_mac = VipConfig { vmac: None, ..vip };
    assert_eq!(default_mac.farm_mac(), [0x5a, 0xfe, 198, 18, 0, 50]);
    let rules: Vec<(Protocol, Option<u16>, Balance)> = c
        .load_balancing
        .iter()
        .map(|r| (r.protocol, r.port, r.balance))
        .collect();
    assert_eq!(
        rules,
        [
            (Protocol::Tcp, Some(80), Balance::ClientIp),
            (Protocol::Udp, None, Balance::ClientIpPort)
        ]
    );
    assert_eq!(parse(&to_toml(&c)).unwrap(), c);

    // Up to 64 nodes; one is not a farm.
    let mut many = FARM.to_string();
    for i in 4..=65 {
        many.push_str(&format!(
            "\n[[node]]\nname = \"n{i}\"\naddress = {{ default = \"198.18.1.{i}\" }}\n"
        ));
    }
    assert_eq!(error(&many).field, "node[64]");
    let one = FARM
        .split("\n[[node]]\nname = \"node2\"")
        .next()
        .unwrap()
        .to_string()
        + "\n[vip]\naddress = \"198.18.0.50\"\n";
    assert!(error(&one).message.contains("2 to 64 nodes, found 1"));
}

#[test]
fn farm_errors() {
    let with = |from: &str, to: &str| {
        assert!(FARM.contains(from), "{from}");
        FARM.replacen(from, to, 1)
    };
    assert_error(
        &with("by = \"client_ip\"", "by = \"cookie\""),
        30,
        6,
        "load_balancing[0].by",
        "unknown value \"cookie\"",
    );
    assert_error(
        &with("protocol = \"udp\"", "protocol = \"sctp\""),
        33,
        12,
        "load_balancing[1].protocol",
        "unknown protocol",
    );
    assert_error(
        &with("protocol = \"udp\"", "protocol = \"tcp\"\nport = 80"),
        32,
        1,
        "load_balancing[1]",
        "load_balancing[0] already covers",
    );
    assert_error(
        &with("5a:fe:00:00:00:01", "5b:fe:00:00:00:01"),
        25,
        8,
        "vip.vmac",
        "not a unicast MAC",
    );
    assert_error(
        &with("5a:fe:00:00:00:01", "5a:fe"),
        25,
        8,
        "vip.vmac",
        "expected a MAC address",
    );
    assert_error(
        &with("power = 2", "power = -1"),
        12,
        9,
        "node[0].power",
        "between 0 and",
    );
    assert_error(
        &with("power = 2", "power = 0").replacen(
            "198.18.0.12\" }",
            "198.18.0.12\" }\npower = 0",
            1,
        ),
        12,
        9,
        "node[0].power",
        "every node has power 0",
    );
    // Rules need the VIP; mirror modules have neither rules, power nor vmac.
    let no_vip = with(
        "[vip]\naddress = \"198.18.0.50\"\nvmac = \"5a:fe:00:00:00:01\"\n",
        "",
    );
    assert_error(&no_vip, 24, 1, "load_balancing[0]", "add a [vip]");
    let mirror =
        MINIMAL.to_string() + "\n[[load_balancing]]\nprotocol = \"tcp\"\nby = \"client_ip\"\n";
    assert_error(&mirror, 13, 1, "load_balancing[0]", "for farm modules");
    let mirror_power = MINIMAL.replacen("198.18.0.11\" }", "198.18.0.11\" }\npower = 3", 1);
    assert_error(
        &mirror_power,
        8,
        9,
        "node[0].power",
        "a mirror module has none",
    );
    let replicated = FARM.to_string() + "\n[[replicated]]\ndir = \"/srv/data\"\n";
    assert_error(&replicated, 36, 1, "replicated[0]", "for mirror modules");
}

/// Script timeouts and a heartbeat short enough for a witness: the stop
/// budget is 3 × 1s, the lease must exceed it by three pulses.
const QUICK: &str =
    "[heartbeat]\ntimeout = \"6s\"\n\n[scripts]\nstart_timeout = \"1s\"\nstop_timeout = \"1s\"\nforce_stop_timeout = \"1s\"\n\n";

#[test]
fn witness_parses_round_trips_and_defaults_its_lease_to_the_timeout() {
    let text = minimal_plus(&format!(
        "{QUICK}[witness]\naddresses = [\"198.18.0.3\", \"10.0.0.3\"]\n"
    ));
    let config = parse(&text).unwrap();
    assert_eq!(
        config.witness,
        Some(WitnessConfig {
            addresses: vec![ip("198.18.0.3"), ip("10.0.0.3")],
            port: DEFAULT_WITNESS_PORT,
            lease: Duration::from_secs(6),
        })
    );
    assert_eq!(config.scripts.stop_budget(), Duration::from_secs(3));
    assert_eq!(parse(&to_toml(&config)).unwrap(), config);
    let text = minimal_plus(&format!(
        "{QUICK}[witness]\naddresses = [\"198.18.0.3\"]\nport = 4999\nlease = \"8s\"\n"
    ));
    let witness = parse(&text).unwrap().witness.unwrap();
    assert_eq!(
        (witness.port, witness.lease),
        (4999, Duration::from_secs(8))
    );
    assert_eq!(parse(MINIMAL).unwrap().witness, None);
}

#[test]
fn witness_errors_are_placed() {
    // QUICK takes lines 12 to 19; [witness] is line 20.
    assert_error(
        &minimal_plus(&format!(
            "{QUICK}[witness]\naddresses = [\"witness.example\"]\n"
        )),
        21,
        14,
        "witness.addresses[0]",
        "expected an IP address",
    );
    assert_error(
        &minimal_plus(&format!("{QUICK}[witness]\naddresses = []\n")),
        21,
        13,
        "witness.addresses",
        "at least one address",
    );
    assert_error(
        &minimal_plus(&format!("{QUICK}[witness]\nport = 4810\n")),
        20,
        1,
        "witness.addresses",
        "required",
    );
    assert_error(
        &minimal_plus(&format!(
            "{QUICK}[witness]\naddresses = [\"198.18.0.3\"]\nlease = \"2s\"\n"
        )),
        22,
        9,
        "witness.lease",
        "at least the heartbeat timeout (6s)",
    );
    // The default script timeouts (300 s each) cannot stop in a 30 s lease.
    assert_error(
        &minimal_plus("[witness]\naddresses = [\"198.18.0.3\"]\n"),
        12,
        1,
        "witness.lease",
        "must exceed the time to stop the application (15m",
    );
    assert_error(
        &minimal_plus(&format!(
            "{QUICK}[witness]\naddresses = [\"198.18.0.3\"]\nleases = \"9s\"\n"
        )),
        22,
        1,
        "witness.leases",
        "unknown",
    );
}

#[test]
fn splitbrain_parses_round_trips_and_is_placed() {
    let text = minimal_plus("[splitbrain]\nping = [\"198.18.0.1\", \"198.18.1.1\"]\n");
    let config = parse(&text).unwrap();
    assert_eq!(
        config.splitbrain,
        Some(SplitBrainConfig {
            ping: vec!["198.18.0.1".parse().unwrap(), "198.18.1.1".parse().unwrap()]
        })
    );
    assert_eq!(parse(&to_toml(&config)).unwrap(), config);
    assert_error(
        &minimal_plus("[splitbrain]\nping = [\"fd00::1\"]\n"),
        13,
        9,
        "splitbrain.ping[0]",
        "expected an IPv4 address",
    );
    assert_error(
        &minimal_plus("[splitbrain]\nping = []\n"),
        13,
        8,
        "splitbrain.ping",
        "at least one address",
    );
    assert_error(
        &minimal_plus(&format!(
            "{QUICK}[witness]\naddresses = [\"198.18.0.3\"]\n\n[splitbrain]\nping = [\"198.18.0.1\"]\n"
        )),
        23,
        1,
        "splitbrain",
        "not both",
    );
}

#[test]
fn a_module_id_gives_safekit_ports() {
    let config = parse(&minimal_plus_module("id = 2")).expect("valid");
    assert_eq!(config.id, Some(2));
    assert_eq!(config.heartbeat.port, 8889);
    assert_eq!(config.replication.port, Some(5604));
    // Explicit ports win.
    let text = minimal_plus_module("id = 2") + "\n[heartbeat]\nport = 4900\n";
    assert_eq!(parse(&text).expect("valid").heartbeat.port, 4900);
    let farm = minimal_plus_module("id = 2").replace("\"mirror\"", "\"farm\"");
    let config = parse(&farm).expect("valid");
    assert_eq!(config.heartbeat.port, 4806);
    assert_eq!(config.replication.port, None);
    assert_error(
        &minimal_plus_module("id = 0"),
        4,
        6,
        "module.id",
        "between 1 and 9999",
    );
    // The id survives the canonical rendering.
    let config = parse(&minimal_plus_module("id = 7")).expect("valid");
    assert_eq!(parse(&to_toml(&config)).expect("valid"), config);
}
