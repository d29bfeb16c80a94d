//! Import of SafeKit's userconfig.xml + cluster.xml.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use holdfast_config::*;

const USERCONFIG: &str = "/var/safekit/modules/web/conf/userconfig.xml";
const CLUSTER: &str = "/var/safekit/cluster/cluster.xml";

/// The Linux userconfig.xml of the "mirror cluster in the cloud" sample, as
/// published — including the typographic quotes on the `<heartbeat>` line.
const SAMPLE: &str = r#"<!DOCTYPE safe>
<safe>
<service mode="mirror" defaultprim="alone" maxloop="3" loop_interval="24" failover="on">
<!-- Server Configuration -->
<!-- Names or IP addresses on the default network are set during initialization in the console -->
<heart pulse="700" timeout="30000">
<heartbeat name=”default” ident=”flow”/>
</heart>
<!-- Software Error Detection Configuration -->
<!-- Replace
* PROCESS_NAME by the name of the process to monitor
-->
<errd polltimer="10">
<proc name="PROCESS_NAME" atleast="1" action="restart" class="prim" />
</errd>
<!-- File Replication Configuration -->
<rfs mountover="off" async="second" acl="off" nbrei="3" >
<replicated dir="/test1replicated" mode="read_only"/>
<replicated dir="/test2replicated" mode="read_only"/>
</rfs>
<!-- User scripts activation -->
<user nicestoptimeout="300" forcestoptimeout="300" logging="userlog"/>
</service>
</safe>
"#;

const CLUSTER_XML: &str = r#"<cluster>
<lans>
 <lan name="default">
  <node name="node1" addr="192.168.1.67"/>
  <node name="node2" addr="192.168.1.68"/>
 </lan>
 <lan name="repli">
  <node name="node1" addr="10.0.0.1"/>
  <node name="node2" addr="10.0.0.2"/>
 </lan>
</lans>
</cluster>
"#;

fn import(userconfig: &str, cluster: &str) -> Result<Imported, ConfigError> {
    import_userconfig(
        userconfig,
        Path::new(USERCONFIG),
        &ImportOptions {
            name: "web",
            id: ModuleId(1),
            nodes: NodeSource::Cluster(cluster, Path::new(CLUSTER)),
        },
    )
}

fn imported(userconfig: &str, cluster: &str) -> Imported {
    import(userconfig, cluster).unwrap_or_else(|e| panic!("import failed: {e}"))
}

#[track_caller]
fn assert_error(
    result: Result<Imported, ConfigError>,
    file: &str,
    line: usize,
    field: &str,
    message: &str,
) -> ConfigError {
    let e = match result {
        Ok(i) => panic!("expected an error, imported {i:?}"),
        Err(e) => e,
    };
    assert_eq!(
        (e.file.as_path(), e.line, e.field.as_str()),
        (Path::new(file), line, field),
        "error was: {e}"
    );
    assert!(
        e.message.contains(message),
        "message {:?} lacks {message:?}",
        e.message
    );
    e
}

/// A minimal userconfig.xml around `service` attributes and `body`.
fn userconfig(service: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE safe>\n<safe>\n<service mode=\"mirror\" boot=\"auto\"{service}>\n<heart>\n<heartbeat name=\"default\"/>\n</heart>\n<user/>\n{body}</service>\n</safe>\n"
    )
}

#[test]
fn the_safekit_sample_imports() {
    let Imported { config, warnings } = imported(SAMPLE, CLUSTER_XML);
    let expected = ModuleConfig {
        name: "web".into(),
        mode: Mode::Mirror,
        id: Some(1),
        failover: true,
        default_primary: DefaultPrimary::Alone,
        swap_back: true,
        boot: Boot::Off,
        maxloop: 3,
        loop_interval: Duration::from_secs(24 * 3600),
        heartbeat: HeartbeatConfig {
            // SafeKit's heartbeat port of module id 1.
            port: 8888,
            pulse: Duration::from_millis(700),
            timeout: Duration::from_secs(30),
            networks: vec!["default".into()],
        },
        nodes: vec![
            NodeConfig {
                name: "node1".into(),
                addresses: BTreeMap::from([(
                    "default".into(),
                    "192.168.1.67".parse().expect("ip"),
                )]),
                power: DEFAULT_POWER,
            },
            NodeConfig {
                name: "node2".into(),
                addresses: BTreeMap::from([(
                    "default".into(),
                    "192.168.1.68".parse().expect("ip"),
                )]),
                power: DEFAULT_POWER,
            },
        ],
        scripts: ScriptsConfig {
            directory: Some("bin".into()),
            start_timeout: Duration::from_secs(300),
            stop_timeout: Duration::from_secs(300),
            force_stop_timeout: Duration::from_secs(300),
            logging: true,
            env: BTreeMap::new(),
        },
        vip: None,
        health: None,
        checkers: vec![sample_process_checker()],
        replication: ReplicationConfig {
            port: Some(5600),
            ..Default::default()
        },
        replicated: vec![
            ReplicatedDir {
                dir: "/test1replicated".into(),
                ..Default::default()
            },
            ReplicatedDir {
                dir: "/test2replicated".into(),
                ..Default::default()
            },
        ],
        load_balancing: Vec::new(),
        witness: None,
        splitbrain: None,
    };
    assert_eq!(config, expected);

    let seen: Vec<(usize, &str)> = warnings
        .iter()
        .map(|w| (w.line, w.element.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (3, "<service>"),
            (7, "<heartbeat>"),
            (17, "<rfs>"),
            (17, "<rfs mountover>"),
            (17, "<rfs acl>"),
            (17, "<rfs nbrei>"),
            (17, "<rfs async>"),
        ],
        "{warnings:#?}"
    );
    assert!(warnings[0].message.contains("boot"));
    assert!(warnings[1].message.contains("typographic quotes"));
    assert!(warnings[2].message.contains("durability = \"sync_calls\""));
    assert_eq!(
        warnings[3].to_string(),
        "line 17: <rfs mountover>: Holdfast mounts its replication file system over the directory itself: no directory is renamed or linked; ignored"
    );
    assert!(warnings[6].message.contains("ack = \"receipt\""));

    // The import is a native configuration like any other.
    let back = parse_module(&to_toml(&config), Path::new("web.toml")).expect("valid");
    assert_eq!(back, config);
}

#[test]
fn typographic_quotes_are_only_fixed_around_values() {
    let text = userconfig("", "<!-- “quoted” in a comment -->\n<user2 a=“x”/>\n").replace(
        "<heartbeat name=\"default\"/>",
        "<heartbeat name=“default\"/>",
    );
    let Imported { config, warnings } = imported(&text, CLUSTER_XML);
    assert_eq!(config.heartbeat.networks, ["default"]);
    let quotes: Vec<(usize, &str)> = warnings
        .iter()
        .filter(|w| w.message.contains("typographic"))
        .map(|w| (w.line, w.element.as_str()))
        .collect();
    assert_eq!(
        quotes,
        [(5, "<heartbeat>"), (9, "<user2>")],
        "{warnings:#?}"
    );
}

#[test]
fn light_modules_are_rejected() {
    let light = SAMPLE.replace("mode=\"mirror\"", "mode=\"light\"");
    let e = assert_error(
        import(&light, CLUSTER_XML),
        USERCONFIG,
        3,
        "<service mode>",
        "not supported yet",
    );
    assert_eq!(e.column, 16);
}

/// A SafeKit farm (User's Guide §13.5, §13.6.6, §15.2.2.4), three nodes.
const FARM: &str = r#"<!DOCTYPE safe>
<safe>
<service mode="farm" boot="on">
 <farm pulse="200" mlost_count="10">
  <lan name="default"/>
 </farm>
 <vip>
  <interface_list>
   <interface check="on">
    <virtual_interface type="vmac_invisible" addr="5A:FE:01:02:03:04">
     <virtual_addr addr="192.168.1.99" where="alias"/>
    </virtual_interface>
   </interface>
  </interface_list>
  <loadbalancing_list>
   <group name="http_service">
    <cluster>
     <host name="node1" power="3"/>
     <host name="node2" power="1"/>
    </cluster>
    <rule port="80" proto="tcp" filter="on_addr"/>
    <rule port="*" proto="udp" filter="on_ipid"/>
    <rule proto="arp" filter="on_addr"/>
   </group>
   <group name="https">
    <cluster><host name="node1" power="1"/></cluster>
    <rule port="443" proto="tcp" filter="on_port"/>
   </group>
  </loadbalancing_list>
 </vip>
 <user/>
</service>
</safe>
"#;

const FARM_CLUSTER: &str = r#"<cluster>
<lans>
 <lan name="default">
  <node name="node1" addr="192.168.1.67"/>
  <node name="node2" addr="192.168.1.68"/>
  <node name="node3" addr="192.168.1.69"/>
 </lan>
</lans>
</cluster>
"#;

#[test]
fn a_safekit_farm_imports() {
    let Imported { config, warnings } = imported(FARM, FARM_CLUSTER);
    assert_eq!(config.mode, Mode::Farm);
    assert_eq!(config.heartbeat.pulse, Duration::from_millis(200));
    assert_eq!(config.heartbeat.timeout, Duration::from_secs(2));
    assert_eq!(config.heartbeat.networks, ["default"]);
    let powers: Vec<(&str, u32)> = config
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.power))
        .collect();
    // node3 is left out of the first <cluster>: no traffic, as in SafeKit.
    assert_eq!(powers, [("node1", 3), ("node2", 1), ("node3", 0)]);
    let vip = config.vip.as_ref().expect("the VIP is imported");
    assert_eq!(vip.address.to_string(), "192.168.1.99");
    assert_eq!(vip.vmac, Some([0x5a, 0xfe, 1, 2, 3, 4]));
    assert_eq!(
        config.load_balancing,
        [
            Rule {
                protocol: Protocol::Tcp,
                port: Some(80),
                balance: Balance::ClientIp
            },
            Rule {
                protocol: Protocol::Udp,
                port: None,
                balance: Balance::ClientIpPort
            },
            Rule {
                protocol: Protocol::Tcp,
                port: Some(443),
                balance: Balance::ClientIpPort
            },
        ]
    );
    let warned = |what: &str| warnings.iter().any(|w| w.to_string().contains(what));
    assert!(
        warned("<rule filter>: balancing on the IP identifier"),
        "{warnings:?}"
    );
    assert!(warned("<rule proto>: ARP answers"), "{warnings:?}");
    assert!(warned("powers per load-balancing group"), "{warnings:?}");
    // And it round-trips through the native format.
    let toml = to_toml(&config);
    assert_eq!(parse_module(&toml, Path::new("web.toml")).unwrap(), config);

    // SafeKit's defaults: 100 ms, 20 pulses; vmac_directed is reported.
    let plain = FARM
        .replace(" pulse=\"200\" mlost_count=\"10\"", "")
        .replace(
            "vmac_invisible\" addr=\"5A:FE:01:02:03:04\"",
            "vmac_directed\"",
        );
    let Imported { config, warnings } = imported(&plain, FARM_CLUSTER);
    assert_eq!(config.heartbeat.pulse, Duration::from_millis(100));
    assert_eq!(config.heartbeat.timeout, Duration::from_secs(2));
    assert_eq!(config.vip.expect("vip").vmac, None);
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("imported as vmac_invisible")),
        "{warnings:?}"
    );
}

#[test]
fn farm_errors_point_into_the_files() {
    let unknown_host = FARM.replace("<host name=\"node2\"", "<host name=\"node9\"");
    assert_error(
        import(&unknown_host, FARM_CLUSTER),
        USERCONFIG,
        19,
        "<host name>",
        "\"node9\" is not a node",
    );
    let bad_mac = FARM.replace("5A:FE:01:02:03:04", "5A:FE:01");
    assert_error(
        import(&bad_mac, FARM_CLUSTER),
        USERCONFIG,
        10,
        "<virtual_interface addr>",
        "expected a MAC address",
    );
    let multicast = FARM.replace("5A:FE:01:02:03:04", "01:00:5E:01:02:03");
    assert_error(
        import(&multicast, FARM_CLUSTER),
        USERCONFIG,
        10,
        "<virtual_interface addr>",
        "not a unicast MAC",
    );
    let bad_filter = FARM.replace(
        "filter=\"on_addr\"/>\n    <rule port=\"*\"",
        "filter=\"on_moon\"/>\n    <rule port=\"*\"",
    );
    assert_error(
        import(&bad_filter, FARM_CLUSTER),
        USERCONFIG,
        21,
        "<rule filter>",
        "unknown filter \"on_moon\"",
    );
    let no_farm = FARM.replace(
        " <farm pulse=\"200\" mlost_count=\"10\">\n  <lan name=\"default\"/>\n </farm>\n",
        "",
    );
    assert_error(
        import(&no_farm, FARM_CLUSTER),
        USERCONFIG,
        3,
        "<service>",
        "needs a <farm> element",
    );
    let shadowed = FARM.replace("port=\"443\"", "port=\"80\"");
    assert_error(
        import(&shadowed, FARM_CLUSTER),
        USERCONFIG,
        27,
        "<rule>",
        "load_balancing[0] already covers",
    );
    let all_zero = FARM.replace("power=\"3\"", "power=\"0\"").replace(
        "power=\"1\"/>\n    </cluster>",
        "power=\"0\"/>\n    </cluster>",
    );
    assert_error(
        import(&all_zero, FARM_CLUSTER),
        USERCONFIG,
        18,
        "<host power>",
        "every node has power 0",
    );
}

#[test]
fn nodes_can_be_given_without_cluster_xml() {
    let nodes = [
        ("node1".to_string(), vec!["198.18.0.1".parse().unwrap()]),
        ("node2".to_string(), vec!["198.18.0.2".parse().unwrap()]),
    ];
    let options = ImportOptions {
        name: "web",
        id: ModuleId(3),
        nodes: NodeSource::Explicit(&nodes),
    };
    let Imported { config, .. } = import_userconfig(SAMPLE, Path::new(USERCONFIG), &options)
        .unwrap_or_else(|e| panic!("import failed: {e}"));
    let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node1", "node2"]);
    assert_eq!(
        config.nodes[1].addresses.get("default"),
        Some(&"198.18.0.2".parse().unwrap())
    );
    // SafeKit's ports of module id 3.
    assert_eq!(config.heartbeat.port, 8890);
    assert_eq!(config.replication.port, Some(5608));
    assert_eq!(config.id, Some(3));

    // One address per heartbeat network, or the error says how many.
    let short = [("node1".to_string(), vec![])];
    let options = ImportOptions {
        nodes: NodeSource::Explicit(&short),
        ..options
    };
    let result = import_userconfig(SAMPLE, Path::new(USERCONFIG), &options);
    assert_error(result, USERCONFIG, 6, "<heart>", "given 0 address(es)");
}

#[test]
fn malformed_xml_has_a_position() {
    let broken = SAMPLE.replace("</heart>", "</hart>");
    let e = assert_error(import(&broken, CLUSTER_XML), USERCONFIG, 8, "", "");
    assert_eq!(e.column, 1);
    assert!(!e.message.contains(" at 8:"), "{}", e.message);
    let e = assert_error(import(SAMPLE, "<cluster><lans>"), CLUSTER, 1, "", "");
    assert!(e.to_string().starts_with(&format!("{CLUSTER}:1:")), "{e}");
}

#[test]
fn service_attributes() {
    let text = userconfig(
        " failover=\"off\" defaultprim=\"node2\" maxloop=\"7\" loop_interval=\"1d\" boot_delay=\"10s\" automatic_reboot=\"on\" colour=\"blue\"",
        "",
    );
    let Imported { config, warnings } = imported(&text, CLUSTER_XML);
    assert!(!config.failover);
    assert_eq!(config.default_primary, DefaultPrimary::Node("node2".into()));
    assert!(config.swap_back);
    assert_eq!(config.boot, Boot::Auto);
    assert_eq!(config.maxloop, 7);
    assert_eq!(config.loop_interval, Duration::from_secs(24 * 3600));
    let elements: Vec<&str> = warnings.iter().map(|w| w.element.as_str()).collect();
    assert_eq!(
        elements,
        [
            "<service colour>",
            "<service boot_delay>",
            "<service automatic_reboot>"
        ],
        "{warnings:#?}"
    );
    assert!(warnings.iter().all(|w| w.line == 3));

    let ignore = userconfig("", "").replace("boot=\"auto\"", "boot=\"ignore\"");
    let Imported { config, warnings } = imported(&ignore, CLUSTER_XML);
    assert_eq!(config.boot, Boot::Off);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].element, "<service boot>");

    assert_error(
        import(&userconfig(" defaultprim=\"node9\"", ""), CLUSTER_XML),
        USERCONFIG,
        3,
        "<service defaultprim>",
        "\"node9\" is not a node of this module",
    );
    assert_error(
        import(&userconfig(" failover=\"yes\"", ""), CLUSTER_XML),
        USERCONFIG,
        3,
        "<service failover>",
        "expected \"on\" or \"off\"",
    );
    assert_error(
        import(&userconfig(" maxloop=\"many\"", ""), CLUSTER_XML),
        USERCONFIG,
        3,
        "<service maxloop>",
        "expected a count",
    );
    assert_error(
        import(&userconfig(" loop_interval=\"soon\"", ""), CLUSTER_XML),
        USERCONFIG,
        3,
        "<service loop_interval>",
        "number of hours",
    );
    let bad_boot = userconfig("", "").replace("boot=\"auto\"", "boot=\"maybe\"");
    assert_error(
        import(&bad_boot, CLUSTER_XML),
        USERCONFIG,
        3,
        "<service boot>",
        "unknown value",
    );
    // An invalid module name is a validation error placed on <service>.
    let result = import_userconfig(
        &userconfig("", ""),
        Path::new(USERCONFIG),
        &ImportOptions {
            name: "web site",
            id: ModuleId(1),
            nodes: NodeSource::Cluster(CLUSTER_XML, Path::new(CLUSTER)),
        },
    );
    assert_error(result, USERCONFIG, 3, "<service>", "invalid module name");
}

#[test]
fn heartbeats() {
    let text = "<safe>\n<service mode=\"mirror\" boot=\"on\">\n<heart port=\"4900\" pulse=\"1s\" timeout=\"10000\" permanent_arp=\"off\">\n<heartbeat name=\"default\" pulse=\"500\"/>\n<heartbeat name=\"repli\" ident=\"private\" timeout=\"10s\"/>\n</heart>\n<user/>\n</service>\n</safe>\n";
    let Imported { config, warnings } = imported(text, CLUSTER_XML);
    assert_eq!(config.heartbeat.port, 4900);
    assert_eq!(config.heartbeat.pulse, Duration::from_secs(1));
    assert_eq!(config.heartbeat.timeout, Duration::from_secs(10));
    assert_eq!(config.heartbeat.networks, ["default", "repli"]);
    assert_eq!(
        config.nodes[1].addresses["repli"],
        "10.0.0.2".parse::<std::net::IpAddr>().expect("ip")
    );
    let seen: Vec<(usize, &str)> = warnings
        .iter()
        .map(|w| (w.line, w.element.as_str()))
        .collect();
    // The equal per-network timeout is not worth a warning.
    assert_eq!(
        seen,
        [
            (3, "<heart permanent_arp>"),
            (4, "<heartbeat pulse>"),
            (5, "<heartbeat ident>")
        ],
        "{warnings:#?}"
    );
    assert!(
        warnings[1].message.contains("1s"),
        "{}",
        warnings[1].message
    );

    // <lans port> is the cluster's administration port, not the module's:
    // the module's port comes from its id when <heart> has none.
    let lans_port = CLUSTER_XML.replace("<lans>", "<lans port=\"5000\">");
    let Imported { config, warnings } = imported(&userconfig("", ""), &lans_port);
    assert_eq!(config.heartbeat.port, 8888);
    assert!(
        warnings.iter().any(|w| w.element == "<lans port>"),
        "{warnings:#?}"
    );
    assert_eq!(imported(text, &lans_port).config.heartbeat.port, 4900);

    // The replication flow's network comes first (the connector tries the
    // networks in order), with no warning.
    let flow = text.replace("ident=\"private\"", "ident=\"flow\"");
    let Imported { config, warnings } = imported(&flow, CLUSTER_XML);
    assert_eq!(config.heartbeat.networks, ["repli", "default"]);
    assert!(
        warnings.iter().all(|w| w.element != "<heartbeat ident>"),
        "{warnings:#?}"
    );

    let no_heart = "<safe>\n<service mode=\"mirror\">\n</service>\n</safe>\n";
    assert_error(
        import(no_heart, CLUSTER_XML),
        USERCONFIG,
        2,
        "<service>",
        "needs a <heart>",
    );
    let empty_heart = userconfig("", "").replace("<heartbeat name=\"default\"/>", "");
    assert_error(
        import(&empty_heart, CLUSTER_XML),
        USERCONFIG,
        4,
        "<heart>",
        "at least one <heartbeat",
    );
    let legacy = userconfig("", "").replace(
        "<heartbeat name=\"default\"/>",
        "<heartbeat><server addr=\"1.2.3.4\"/></heartbeat>",
    );
    assert_error(
        import(&legacy, CLUSTER_XML),
        USERCONFIG,
        5,
        "<heartbeat>",
        "<server> syntax is not supported",
    );
    let fast = userconfig("", "").replace("<heart>", "<heart pulse=\"1s\" timeout=\"1500ms\">");
    assert_error(
        import(&fast, CLUSTER_XML),
        USERCONFIG,
        4,
        "<heart timeout>",
        "at least twice the pulse",
    );
    let bad = userconfig("", "").replace("<heart>", "<heart pulse=\"fast\">");
    assert_error(
        import(&bad, CLUSTER_XML),
        USERCONFIG,
        4,
        "<heart pulse>",
        "number of milliseconds",
    );
    let unknown_lan = userconfig("", "").replace("name=\"default\"", "name=\"backup\"");
    assert_error(
        import(&unknown_lan, CLUSTER_XML),
        USERCONFIG,
        5,
        "<heartbeat name>",
        "\"backup\" is not defined in cluster.xml",
    );
}

#[test]
fn user_scripts_and_variables() {
    let text = userconfig("", "")
        .replace(
            "<user/>",
            "<user nicestoptimeout=\"2m\" forcestoptimeout=\"20\" logging=\"none\" userlogsize=\"4096\">\n<var name=\"APP_PORT\" value=\"8080\"/>\n<var name=\"APP_HOME\" value=\"%HOME%/app\"/>\n</user>",
        )
        .replace("<safe>\n", "<safe>\n<macro name=\"HOME\" value=\"/opt\"/>\n");
    let Imported { config, warnings } = imported(&text, CLUSTER_XML);
    assert_eq!(config.scripts.stop_timeout, Duration::from_secs(120));
    assert_eq!(config.scripts.force_stop_timeout, Duration::from_secs(20));
    assert!(!config.scripts.logging);
    assert_eq!(config.scripts.env["APP_PORT"], "8080");
    assert_eq!(config.scripts.env["APP_HOME"], "%HOME%/app");
    let seen: Vec<(usize, &str)> = warnings
        .iter()
        .map(|w| (w.line, w.element.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (3, "<macro>"),
            (8, "<user userlogsize>"),
            (10, "<var value>")
        ],
        "{warnings:#?}"
    );
    assert!(warnings[2].message.contains("%HOME%"));

    let bad_name = userconfig("", "").replace(
        "<user/>",
        "<user>\n<var name=\"APP-PORT\" value=\"1\"/>\n</user>",
    );
    assert_error(
        import(&bad_name, CLUSTER_XML),
        USERCONFIG,
        8,
        "<var name>",
        "not a valid environment variable name",
    );
    let twice = userconfig("", "").replace(
        "<user/>",
        "<user>\n<var name=\"A\" value=\"1\"/>\n<var name=\"A\" value=\"2\"/>\n</user>",
    );
    assert_error(
        import(&twice, CLUSTER_XML),
        USERCONFIG,
        9,
        "<var name>",
        "defined twice",
    );
    let logging = userconfig("", "").replace("<user/>", "<user logging=\"syslog\"/>");
    assert_error(
        import(&logging, CLUSTER_XML),
        USERCONFIG,
        7,
        "<user logging>",
        "expected \"userlog\" or \"none\"",
    );

    // Without <user>, SafeKit would not run scripts: worth a warning.
    let no_user = userconfig("", "").replace("<user/>\n", "");
    let Imported { warnings, .. } = imported(&no_user, CLUSTER_XML);
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        (warnings[0].line, warnings[0].element.as_str()),
        (3, "<service>")
    );
}

#[test]
fn unsupported_elements_are_all_reported() {
    let body = "<vip>\n<interface_list/>\n</vip>\n<check/>\n<failover/>\n<vhost/>\n<splitbrain/>\n";
    let Imported { warnings, .. } = imported(&userconfig("", body), CLUSTER_XML);
    let seen: Vec<(usize, &str)> = warnings
        .iter()
        .map(|w| (w.line, w.element.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (8, "<vip>"),
            (12, "<failover>"),
            (13, "<vhost>"),
            (14, "<splitbrain>")
        ],
        "{warnings:#?}"
    );
    assert!(warnings[3].message.contains("unknown"));
}

#[test]
fn cluster_xml_nodes() {
    let nat = CLUSTER_XML.replace(
        "addr=\"192.168.1.67\"",
        "addr=\"192.168.1.67\" laddr=\"10.1.0.1\"",
    );
    let Imported { warnings, .. } = imported(&userconfig("", ""), &nat);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(
        (warnings[0].line, warnings[0].element.as_str()),
        (4, "<node laddr>")
    );
    assert!(
        warnings[0]
            .message
            .starts_with("cluster.xml: NAT addresses are not supported"),
        "{}",
        warnings[0]
    );

    let ipv6 = CLUSTER_XML.replace("addr=\"192.168.1.67\"", "addr=\"[fd00::67]\"");
    let Imported { config, .. } = imported(&userconfig("", ""), &ipv6);
    assert_eq!(
        config.nodes[0].addresses["default"],
        "fd00::67".parse::<std::net::IpAddr>().expect("ip")
    );

    let dns = CLUSTER_XML.replace("addr=\"192.168.1.68\"", "addr=\"node2.example.com\"");
    let e = assert_error(
        import(&userconfig("", ""), &dns),
        CLUSTER,
        5,
        "<node addr>",
        "does not resolve host names",
    );
    assert_eq!(e.column, 28);

    let three = CLUSTER_XML.replace(
        "  <node name=\"node2\" addr=\"192.168.1.68\"/>\n",
        "  <node name=\"node2\" addr=\"192.168.1.68\"/>\n  <node name=\"node3\" addr=\"192.168.1.69\"/>\n",
    );
    assert_error(
        import(&userconfig("", ""), &three),
        CLUSTER,
        6,
        "<node>",
        "exactly 2 nodes, found 3",
    );

    let same = CLUSTER_XML.replace("192.168.1.68", "192.168.1.67");
    assert_error(
        import(&userconfig("", ""), &same),
        CLUSTER,
        5,
        "<node addr>",
        "already used",
    );

    // A node missing on one of the module's networks.
    let text = userconfig("", "").replace(
        "<heartbeat name=\"default\"/>",
        "<heartbeat name=\"default\"/>\n<heartbeat name=\"repli\"/>",
    );
    let partial = CLUSTER_XML.replace("  <node name=\"node2\" addr=\"10.0.0.2\"/>\n", "");
    assert_error(
        import(&text, &partial),
        CLUSTER,
        5,
        "<node>",
        "missing the address of node \"node2\" on heartbeat network \"repli\"",
    );

    assert_error(
        import(&userconfig("", ""), "<lans/>"),
        CLUSTER,
        1,
        "<lans>",
        "expected <cluster>",
    );
}

#[test]
fn root_must_be_safe() {
    assert_error(
        import("<config/>", CLUSTER_XML),
        USERCONFIG,
        1,
        "<config>",
        "expected <safe>",
    );
    assert_error(
        import("<safe/>", CLUSTER_XML),
        USERCONFIG,
        1,
        "<safe>",
        "missing <service>",
    );
}

#[test]
fn warnings_display() {
    let w = ImportWarning {
        line: 12,
        element: "<errd>".into(),
        message: "not supported".into(),
    };
    assert_eq!(w.to_string(), "line 12: <errd>: not supported");
}

#[test]
fn vip_is_imported_and_farm_parts_are_reported() {
    let vip = r#"<vip>
 <interface_list>
  <interface check="on" arpreroute="on">
   <real_interface>
    <virtual_addr addr="192.168.1.99" where="one_side_alias"/>
    <virtual_addr addr="192.168.1.98" where="one_side_alias"/>
   </real_interface>
  </interface>
 </interface_list>
 <loadbalancing_list/>
</vip>
<user "#;
    let text = SAMPLE.replacen("<user ", vip, 1);
    let imported = imported(&text, CLUSTER_XML);
    let config_vip = imported.config.vip.expect("the VIP is imported");
    assert_eq!(config_vip.address.to_string(), "192.168.1.99");
    assert_eq!(config_vip.prefix, 32);
    let warned = |what: &str| {
        imported
            .warnings
            .iter()
            .any(|w| w.to_string().contains(what))
    };
    assert!(warned("only one virtual IP"), "{:?}", imported.warnings);
    assert!(warned("<loadbalancing_list>"), "{:?}", imported.warnings);

    let bad = SAMPLE.replacen("<user ", "<vip><interface_list><interface><real_interface><virtual_addr addr=\"vip.example\"/></real_interface></interface></interface_list></vip>\n<user ", 1);
    let e = import(&bad, CLUSTER_XML).unwrap_err();
    assert_eq!(e.field, "<virtual_addr addr>");
    assert!(e.message.contains("host names are not supported"), "{e}");
}

/// The sample's `<errd polltimer="10"><proc name="PROCESS_NAME" atleast="1" action="restart" class="prim"/>`.
fn sample_process_checker() -> holdfast_config::checker::CheckerConfig {
    let mut checker =
        holdfast_config::checker::CheckerConfig::process("PROCESS_NAME", "PROCESS_NAME");
    checker.action = holdfast_config::checker::Action::Restart;
    checker.interval = std::time::Duration::from_secs(10);
    checker
}

#[test]
fn checkers_are_imported_from_errd_and_check() {
    let body = r#"<errd polltimer="5s">
<proc name="nginx" atleast="2" atmax="4" argregex="master" action="stopstart" class="both" start_after="3"/>
</errd>
<check>
<tcp ident="web" when="prim" action="restart"><to addr="192.168.1.99" port="80" interval="2" timeout="1"/></tcp>
<ping ident="gw" when="pre"><to addr="192.168.1.1"/></ping>
<intf ident="lan"><to local_addr="192.168.1.67"/></intf>
<custom ident="db" exec="check_db"/>
</check>
"#;
    let Imported { config, warnings } = imported(&userconfig("", body), CLUSTER_XML);
    let names: Vec<String> = config.checkers.iter().map(|c| c.resource()).collect();
    assert_eq!(names, ["proc.nginx", "tcp.web", "ping.gw", "intf.lan"]);
    let nginx = &config.checkers[0];
    assert_eq!(nginx.when, holdfast_config::checker::When::Both);
    assert_eq!(nginx.interval, std::time::Duration::from_secs(5));
    let holdfast_config::checker::CheckerKind::Process(p) = &nginx.kind else {
        panic!("process")
    };
    assert_eq!(
        (p.atleast, p.atmost, p.args_regex.as_deref()),
        (Some(2), Some(4), Some("master"))
    );
    assert_eq!(
        config.checkers[1].interval,
        std::time::Duration::from_secs(2)
    );
    let warned: Vec<&str> = warnings.iter().map(|w| w.element.as_str()).collect();
    assert!(warned.contains(&"<proc start_after>"), "{warned:?}");
    assert!(
        warned.contains(&"<custom>"),
        "custom checkers are reported: {warned:?}"
    );
    // The native rendering carries them over.
    let toml = to_toml(&config);
    assert_eq!(
        parse_module(&toml, Path::new("web.toml")).unwrap().checkers,
        config.checkers
    );

    let bad = r#"<check><tcp ident="web"><to addr="db.example" port="5432"/></tcp></check>"#;
    let e = import(&userconfig("", bad), CLUSTER_XML).unwrap_err();
    assert!(e.message.contains("host names are not supported"), "{e}");
}

#[test]
fn the_splitbrain_checker_is_imported_as_splitbrain_ping() {
    let body = "<check>\n<splitbrain ident=\"witness\" exec=\"ping\" arg=\"192.168.1.100 192.168.2.120\"/>\n</check>\n";
    let Imported { config, warnings } = imported(&userconfig("", body), CLUSTER_XML);
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(
        config.splitbrain,
        Some(SplitBrainConfig {
            ping: vec![
                "192.168.1.100".parse().unwrap(),
                "192.168.2.120".parse().unwrap()
            ]
        })
    );
    assert!(config.checkers.is_empty());
    let toml = to_toml(&config);
    assert!(toml.contains("[splitbrain]"), "{toml}");
    assert_eq!(
        parse_module(&toml, Path::new("web.toml"))
            .unwrap()
            .splitbrain,
        config.splitbrain
    );

    let bad = "<check><splitbrain ident=\"w\" exec=\"ping\" arg=\"witness.example\"/></check>";
    let e = import(&userconfig("", bad), CLUSTER_XML).unwrap_err();
    assert!(e.message.contains("host names are not supported"), "{e}");
    assert_eq!(e.field, "<splitbrain arg>");
    let bad = "<check><splitbrain ident=\"w\" exec=\"arping\" arg=\"192.168.1.100\"/></check>";
    let e = import(&userconfig("", bad), CLUSTER_XML).unwrap_err();
    assert!(e.message.contains("only pings"), "{e}");
}

#[test]
fn module_checkers_of_this_node_are_imported_remote_ones_reported() {
    let body = "<check>\n<module name=\"mysql\"/>\n<module ident=\"db\" name=\"pg\"/>\n<module name=\"far\"><to addr=\"192.168.1.99\" port=\"9010\"/></module>\n</check>\n";
    let Imported { config, warnings } = imported(&userconfig("", body), CLUSTER_XML);
    let names: Vec<String> = config.checkers.iter().map(|c| c.resource()).collect();
    assert_eq!(names, ["module.mysql", "module.db"]);
    let holdfast_config::checker::CheckerKind::Module(m) = &config.checkers[1].kind else {
        panic!("module checker")
    };
    assert_eq!(m.module, "pg");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0].element, "<module><to>");
    assert!(warnings[0].message.contains("another server"));
    let toml = to_toml(&config);
    assert_eq!(
        parse_module(&toml, Path::new("web.toml")).unwrap().checkers,
        config.checkers
    );
}

#[test]
fn notreplicated_entries_become_exclusions() {
    let text = SAMPLE.replace(
        r#"<replicated dir="/test1replicated" mode="read_only"/>"#,
        r#"<replicated dir="/test1replicated" mode="read_only">
<notreplicated path="logs"/>
<notreplicated regexpath=".*\.tmp$"/>
<notreplicated regexpath="!.*\.mdf$"/>
</replicated>"#,
    );
    let Imported { config, warnings } = imported(&text, CLUSTER_XML);
    assert_eq!(
        config.replicated[0].exclude,
        vec![std::path::PathBuf::from("logs")]
    );
    assert_eq!(config.replicated[0].exclude_names, vec![r".*\.tmp$"]);
    assert!(config.replicated[1].exclude.is_empty());
    let reported: Vec<&str> = warnings.iter().map(|w| w.element.as_str()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.element == "<notreplicated regexpath>" && w.message.contains("only")),
        "{warnings:#?}"
    );
    assert!(!reported.contains(&"<notreplicated>"), "{warnings:#?}");
    let rendered = holdfast_config::to_toml(&config);
    assert!(rendered.contains("exclude = [\"logs\"]"), "{rendered}");
}

#[test]
fn rfs_async_maps_onto_the_acknowledgement_and_the_durability_is_said() {
    let rfs = |attrs: &str| {
        userconfig(
            "",
            &format!("<rfs{attrs}>\n<replicated dir=\"/srv/data\"/>\n</rfs>\n"),
        )
    };
    let durable = imported(&rfs(" async=\"none\""), CLUSTER_XML);
    assert_eq!(durable.config.replication.ack, AckPolicy::Durable);
    assert_eq!(
        durable.config.replication.durability,
        DurabilityPolicy::SyncCalls
    );
    let said = |w: &[ImportWarning], element: &str, text: &str| {
        w.iter()
            .any(|w| w.element == element && w.message.contains(text))
    };
    assert!(said(&durable.warnings, "<rfs async>", "ack = \"durable\""));
    assert!(said(
        &durable.warnings,
        "<rfs>",
        "durability = \"sync_calls\""
    ));
    let receipt = imported(&rfs(""), CLUSTER_XML);
    assert_eq!(receipt.config.replication.ack, AckPolicy::Receipt);
    assert!(said(&receipt.warnings, "<rfs>", "every_call"));
    assert_error(
        import(&rfs(" async=\"always\""), CLUSTER_XML),
        USERCONFIG,
        8,
        "<rfs async>",
        "\"second\" or \"none\"",
    );
}
