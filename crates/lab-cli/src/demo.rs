//! `holdfast-lab demo`: a 2-node cluster running the sample application,
//! its state printed every second until Ctrl-C (or `--seconds`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use holdfast_lab::cluster::{MirrorLab, MirrorOptions};
use holdfast_lab::Executables;

fn interrupted() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        set.store(true, Ordering::SeqCst);
    });
    Ok(flag)
}

/// The HTTPS API's port on the demo's nodes.
const API_PORT: u16 = 9453;

/// Makes node1 and node2 a cluster (node1 holds the CA) with the HTTPS API
/// up; says how to reach it, with the administrator's password.
fn https_api(cluster: &MirrorLab) -> Result<String> {
    let address = |host: &str| -> Result<String> {
        Ok(format!("{}:{API_PORT}", cluster.lab.address(host, 0)?))
    };
    let (node1, node2) = (address("node1")?, address("node2")?);
    let init = cluster.run_cli_checked(
        "node1",
        &["cluster", "init", "--name", "demo", "--address", &node1],
    )?;
    let init = String::from_utf8_lossy(&init.stdout).into_owned();
    let find = |prefix: &str| {
        init.lines()
            .find_map(|l| {
                l.split_once(prefix)
                    .map(|(_, rest)| rest.trim().to_string())
            })
            .ok_or_else(|| anyhow::anyhow!("`holdfast cluster init` said no {prefix:?}: {init}"))
    };
    let password = find("password: ")?;
    let token = find("holdfast cluster join ")?;
    cluster.run_cli_checked("node2", &["cluster", "join", &token, "--address", &node2])?;
    let ca = cluster
        .lab
        .host_dir("node1")?
        .join("etc-holdfast/pki/ca.pem");
    Ok(format!(
        "The cluster's HTTPS API (any node answers for both; reachable from the lab's hosts):\n\
         \x20 https://{node1}/v1/   and   https://{node2}/v1/\n\
         \x20 user: admin   password: {password}\n\
         \x20 the CA to trust: {ca}\n\
         \x20 holdfast-lab exec client -- curl --cacert {ca} -c /tmp/demo.jar \\\n\
         \x20     -H 'content-type: application/json' -d '{{\"user\":\"admin\",\"password\":\"{password}\"}}' https://{node1}/v1/session\n\
         \x20 holdfast-lab exec client -- curl --cacert {ca} -b /tmp/demo.jar https://{node1}/v1/cluster/state\n\
         \x20 holdfast-lab exec node1 -- holdfast -H '*' state\n",
        ca = ca.display()
    ))
}

pub fn run(exes: &Executables, seconds: Option<u64>) -> Result<()> {
    let stop = interrupted()?;
    println!("building the lab: 2 nodes and a client in network namespaces...");
    let options = MirrorOptions {
        pulse: Duration::from_millis(200),
        timeout: Duration::from_secs(3),
        vip: true,
        tail: "\n[replication]\nport = 4900\n\n[[replicated]]\ndir = \"/srv/demo/data\"\n".into(),
        ..MirrorOptions::default()
    };
    let cluster = MirrorLab::create(exes, options)?;
    cluster.start_module()?;
    let api = https_api(&cluster)?;
    let id = cluster.lab.id().to_string();
    println!(
        "\nlab {id} is running module `demo` on node1 and node2 (heartbeat 200 ms, timeout 3 s).\n\
         The sample application runs on the primary: it appends a line per second to /srv/demo/app.log\n\
         and answers TCP port 8080 on the virtual IP {vip} with the name of the node serving.\n\
         /srv/demo/data is replicated synchronously from the primary to the secondary.\n\n\
         In another terminal, as root:\n\
         \x20 holdfast-lab state                          # state of both nodes\n\
         \x20 holdfast-lab kill node1                     # crash node1: node2 takes over in ~3 s\n\
         \x20 holdfast-lab start-daemon node1             # node1 comes back as SECOND\n\
         \x20 holdfast-lab partition node1 node2          # split brain without a witness; `heal` ends it\n\
         \x20 holdfast-lab exec node1 -- tail -3 /srv/demo/app.log\n\
         \x20 holdfast-lab exec node1 -- sh -c 'date > /srv/demo/data/f'   # replicated (on the primary)\n\
         \x20 holdfast-lab exec node2 -- cat /srv/demo/data/f              # read-only on the secondary\n\
         \x20 holdfast-lab exec client -- bash -c 'cat < /dev/tcp/{vip}/8080'\n\
         \x20 holdfast-lab exec node1 -- holdfast swap -m demo\n\
         \x20 holdfast-lab exec node2 -- holdfast log -m demo\n\n\
         Ctrl-C here removes the lab.\n",
        vip = holdfast_lab::cluster::VIP
    );
    println!("{api}");
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    // Bounded by Ctrl-C, --seconds, or a day at most.
    for _ in 0..86_400 {
        if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let line: Vec<String> = ["node1", "node2"]
            .iter()
            .map(|h| match cluster.state(h) {
                Some(s) => format!("{h}: {:<6} ({})", s.state, s.reason),
                None => format!("{h}: daemon down"),
            })
            .collect();
        let running: Vec<&str> = ["node1", "node2"]
            .into_iter()
            .filter(|h| cluster.app_pid(h).is_some())
            .collect();
        println!(
            "{}   application on: {}",
            line.join("   "),
            running.join(", ")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("removing lab {id}...");
    Ok(())
}
