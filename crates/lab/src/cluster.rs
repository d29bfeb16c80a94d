//! A Holdfast mirror module (or, with [`MirrorOptions::farm`], a farm
//! module) running on lab hosts: a daemon per host with its own state
//! directory, the cluster key, the module installed through the real CLI,
//! and the sample application's scripts. Used by the integration tests, the
//! demo (`holdfast-lab demo`) and the benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{wait_until, Executables, Lab, LabError, LabSpec, Result};

/// The sample application's scripts (also the demo's).
pub const DEMO_SCRIPTS: [(&str, &str); 3] = [
    ("prestart", include_str!("../demo/prestart")),
    ("start_prim", include_str!("../demo/start_prim")),
    ("stop_prim", include_str!("../demo/stop_prim")),
];

/// The same scripts for a farm module: every node starts the application.
pub const FARM_SCRIPTS: [(&str, &str); 3] = [
    ("prestart", include_str!("../demo/prestart")),
    ("start_both", include_str!("../demo/start_prim")),
    ("stop_both", include_str!("../demo/stop_prim")),
];

/// A farm module instead of a mirror.
#[derive(Debug, Clone)]
pub struct FarmOptions {
    /// The power of node1..nodeN (so the number of nodes).
    pub powers: Vec<u32>,
    /// `[[load_balancing]]` tables.
    pub rules: String,
}

/// The sample application's long-connection port (name, then echo).
pub const ECHO_PORT: u16 = 8081;

/// How to build the module.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub module: String,
    /// Heartbeat networks (1 or 2).
    pub networks: usize,
    pub pulse: Duration,
    pub timeout: Duration,
    /// Extra lines for the `[module]` table, e.g. `default_primary = "node1"`.
    pub module_extra: String,
    /// Give the module the virtual IP [`VIP`] (prefix /24 on network 0).
    pub vip: bool,
    /// Cloud mode: a health endpoint on [`HEALTH_PORT`].
    pub health: bool,
    /// More TOML at the end of the file, e.g. `[[checker]]` tables.
    pub tail: String,
    /// Run `holdfast witness` on the client host and give the module a
    /// `[witness]` with this lease; the script timeouts are then a quarter
    /// of it each, so that the application stops well within it.
    pub witness_lease: Option<Duration>,
    /// A farm module of this many nodes and rules; the VIP is then the
    /// farm's (with `vip`).
    pub farm: Option<FarmOptions>,
}

/// The witness's UDP port when [`MirrorOptions::witness_lease`] is set.
pub const WITNESS_PORT: u16 = 4810;

/// The health endpoint's port when [`MirrorOptions::health`] is set.
pub const HEALTH_PORT: u16 = 9010;

/// The virtual IP used when [`MirrorOptions::vip`] is set.
pub const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 18, 0, 50);
/// The sample application's TCP port (it answers with the node's name).
pub const APP_PORT: u16 = 8080;

impl Default for MirrorOptions {
    fn default() -> Self {
        Self {
            module: "demo".into(),
            networks: 1,
            pulse: Duration::from_millis(100),
            timeout: Duration::from_millis(1500),
            module_extra: String::new(),
            vip: false,
            health: false,
            tail: String::new(),
            witness_lease: None,
            farm: None,
        }
    }
}

/// One line of the state of the module on a node (the CLI's `--json`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NodeState {
    pub state: String,
    pub transient: bool,
    pub app_active: bool,
    pub reason: String,
    pub peer_state: Option<String>,
    #[serde(default)]
    pub networks_up: Vec<bool>,
    /// Replicated directories: what each is doing on this node.
    #[serde(default)]
    pub replication: Vec<DirState>,
    /// Farm modules: the buckets served here.
    #[serde(default)]
    pub farm: Option<FarmState>,
}

/// The farm part of [`NodeState`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct FarmState {
    pub buckets: usize,
}

/// A replicated directory in [`NodeState`].
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DirState {
    pub dir: String,
    /// `idle`, `receiving`, `tracking`, `resynchronising`, `mirroring`.
    pub activity: String,
    /// What keeps it from mirroring.
    #[serde(default)]
    pub problem: Option<String>,
    /// While tracking: what the next resynchronisation will send.
    #[serde(default)]
    pub tracked: Option<TrackedState>,
    /// The last resynchronisation it completed as primary.
    #[serde(default)]
    pub last_resync: Option<LastResync>,
}

/// The `tracked` part of a [`DirState`] (some of its fields).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TrackedState {
    pub files: u64,
    /// Tracked bytes to send.
    pub bytes: u64,
    /// Tracked bytes to compare by checksum (only differing blocks sent).
    pub bytes_compared: u64,
    /// Directories compared entry by entry (after a crash of the lone
    /// primary): what differs there is unknown until compared.
    pub directories: u64,
    /// Tracking was lost: the amount is unknown until compared.
    pub everything: bool,
    /// At the rate of the last resynchronisation (if one measured it).
    #[serde(default)]
    pub eta_seconds: Option<f64>,
}

/// Every replicated directory of `state` is `activity`.
pub fn replicating(state: &Option<NodeState>, activity: &str) -> bool {
    state.as_ref().is_some_and(|s| {
        !s.replication.is_empty() && s.replication.iter().all(|d| d.activity == activity)
    })
}

/// `state` is `name` and not in transition.
pub fn settled(state: &Option<NodeState>, name: &str) -> bool {
    state
        .as_ref()
        .is_some_and(|s| s.state == name && !s.transient)
}

/// The last resynchronisation a directory's primary completed, as
/// `holdfast state --json` reports it ([`DirState::last_resync`]).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct LastResync {
    /// What it covered: "tracked changes", "tracked changes and the
    /// secondary's activity log: N regions", "comparing checksums: why".
    pub basis: String,
    /// Data bytes sent.
    pub bytes_sent: u64,
    /// Blocks compared by checksum.
    pub blocks_compared: u64,
    /// Bytes those blocks hold.
    pub bytes_compared: u64,
    /// From its start to its end.
    pub seconds: f64,
    /// When it ended, Unix time in milliseconds.
    pub ended_at_ms: u64,
}

/// Two hosts (node1, node2) and a client running a mirror module.
#[derive(Debug)]
pub struct MirrorLab {
    pub lab: Lab,
    pub options: MirrorOptions,
    exes: Executables,
    daemons: Vec<(String, Child)>,
}

impl MirrorLab {
    /// Builds the lab, installs the module on both nodes and starts the
    /// daemons (the module itself is not started).
    pub fn create(exes: &Executables, options: MirrorOptions) -> Result<Self> {
        let hosts = options.farm.as_ref().map_or(2, |f| f.powers.len());
        let lab = Lab::create(LabSpec {
            hosts,
            networks: options.networks,
            client: true,
        })?;
        let mut this = Self {
            lab,
            options,
            exes: exes.clone(),
            daemons: Vec::new(),
        };
        let key = this
            .run_cli_checked("node1", &["cluster", "keygen"])?
            .stdout;
        let config = this.module_toml()?;
        for host in this.lab.nodes() {
            let etc = this.lab.host_dir(&host)?.join("etc-holdfast");
            let scripts = etc.join(&this.options.module).join("scripts");
            std::fs::create_dir_all(&scripts)
                .map_err(|e| LabError::io(format!("creating {}", scripts.display()), e))?;
            write(&etc.join("cluster.key"), &key)?;
            write(
                &etc.join(&this.options.module).join("module.toml"),
                config.as_bytes(),
            )?;
            let scripts_of = if this.options.farm.is_some() {
                FARM_SCRIPTS
            } else {
                DEMO_SCRIPTS
            };
            for (name, body) in scripts_of {
                let path = scripts.join(name);
                write(&path, body.as_bytes())?;
                set_executable(&path)?;
            }
            this.start_daemon(&host)?;
            let module_file = format!("/etc/holdfast/{}/module.toml", this.options.module);
            this.run_cli_checked(&host, &["module", "install", &module_file])?;
        }
        if let Some(lease) = this.options.witness_lease {
            let etc = this.lab.host_dir(crate::CLIENT)?.join("etc-holdfast");
            std::fs::create_dir_all(&etc)
                .map_err(|e| LabError::io(format!("creating {}", etc.display()), e))?;
            write(&etc.join("cluster.key"), &key)?;
            this.start_witness(lease)?;
        }
        Ok(this)
    }

    /// Starts `holdfast witness` on the client host (its output in the
    /// host's `witness.log`), granting leases up to `max_lease`.
    pub fn start_witness(&mut self, max_lease: Duration) -> Result<()> {
        let listen = format!("0.0.0.0:{WITNESS_PORT}");
        let max_lease = format!("{}ms", max_lease.as_millis());
        let args = [
            "witness",
            "--listen",
            &listen,
            "--key",
            "/etc/holdfast/cluster.key",
            "--max-lease",
            &max_lease,
        ];
        self.spawn_logged(crate::CLIENT, &args, "witness.log")?;
        Ok(())
    }

    fn module_toml(&self) -> Result<String> {
        let o = &self.options;
        let networks: Vec<String> = (0..o.networks).map(|k| format!("\"net{k}\"")).collect();
        let mode = if o.farm.is_some() { "farm" } else { "mirror" };
        let mut text = format!(
            "[module]\nname = \"{}\"\nmode = \"{mode}\"\n{}\n\n[heartbeat]\nport = 4800\npulse = \"{}ms\"\ntimeout = \"{}ms\"\nnetworks = [{}]\n",
            o.module,
            o.module_extra,
            o.pulse.as_millis(),
            o.timeout.as_millis(),
            networks.join(", ")
        );
        for (i, host) in self.lab.nodes().into_iter().enumerate() {
            let addresses: Vec<String> = (0..o.networks)
                .map(|k| Ok(format!("net{k} = \"{}\"", self.lab.address(&host, k)?)))
                .collect::<Result<_>>()?;
            text.push_str(&format!(
                "\n[[node]]\nname = \"{host}\"\naddress = {{ {} }}\n",
                addresses.join(", ")
            ));
            if let Some(power) = o.farm.as_ref().and_then(|f| f.powers.get(i)) {
                text.push_str(&format!("power = {power}\n"));
            }
        }
        if o.vip {
            text.push_str(&format!("\n[vip]\naddress = \"{VIP}\"\nprefix = 24\n"));
        }
        if o.health {
            text.push_str(&format!("\n[health]\nport = {HEALTH_PORT}\n"));
        }
        if let Some(farm) = &o.farm {
            text.push_str(&farm.rules);
        }
        text.push_str(&o.tail);
        let (start, stop) = match o.witness_lease {
            Some(lease) => {
                let addresses: Vec<String> = (0..o.networks)
                    .map(|k| Ok(format!("\"{}\"", self.lab.address(crate::CLIENT, k)?)))
                    .collect::<Result<_>>()?;
                text.push_str(&format!(
                    "\n[witness]\naddresses = [{}]\nport = {WITNESS_PORT}\nlease = \"{}ms\"\n",
                    addresses.join(", "),
                    lease.as_millis()
                ));
                (lease / 4, lease / 4)
            }
            None => (Duration::from_secs(20), Duration::from_secs(10)),
        };
        text.push_str(&format!(
            "\n[scripts]\ndirectory = \"scripts\"\nstart_timeout = \"{}ms\"\nstop_timeout = \"{}ms\"\nforce_stop_timeout = \"{}ms\"\n",
            start.as_millis(),
            stop.as_millis(),
            stop.as_millis()
        ));
        Ok(text)
    }

    /// Starts `holdfast <args>` on `host`, its output appended to the
    /// host's `<log>`; returns the log's path.
    fn spawn_logged(&mut self, host: &str, args: &[&str], log: &str) -> Result<PathBuf> {
        let log_path = self.lab.host_dir(host)?.join(log);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| LabError::io(format!("opening {}", log_path.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| LabError::io(log.to_string(), e))?;
        let child = self
            .lab
            .command(host, &self.exes.holdfast)?
            .args(args)
            .env("RUST_LOG", "info")
            .env("PATH", self.exes.search_path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| LabError::io(format!("starting holdfast {} on {host}", args[0]), e))?;
        self.daemons.push((host.to_string(), child));
        Ok(log_path)
    }

    /// The product and the lab tool the hosts run.
    pub fn executables(&self) -> &Executables {
        &self.exes
    }

    /// Starts `host`'s daemon and waits until its API answers.
    pub fn start_daemon(&mut self, host: &str) -> Result<()> {
        let log_path = self.spawn_logged(host, &["daemon", "--node", host], "daemon.log")?;
        let up = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            self.cli(host, &["module", "list"])
                .is_ok_and(|o| o.status.success())
        });
        if !up {
            return Err(LabError::Cluster(format!(
                "the daemon on {host} did not answer within 15 s; see {}",
                log_path.display()
            )));
        }
        Ok(())
    }

    /// `kill -9` of everything on `host`: daemon, scripts, application.
    pub fn kill(&mut self, host: &str) -> Result<()> {
        self.lab.kill_host(host)?;
        self.reap(host);
        Ok(())
    }

    /// SIGTERM to `host`'s daemon (an orderly shutdown, as systemd does),
    /// then waits (bounded by the stop scripts' limits) for it to exit.
    pub fn terminate(&mut self, host: &str) -> Result<()> {
        let Some(child) = self
            .daemons
            .iter_mut()
            .find_map(|(h, c)| (h == host && matches!(c.try_wait(), Ok(None))).then_some(c))
        else {
            return Err(LabError::Cluster(format!("no running daemon on {host}")));
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| LabError::Cluster(format!("SIGTERM to the daemon on {host}: {e}")))?;
        let exited = wait_until(Duration::from_secs(30), Duration::from_millis(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            return Err(LabError::Cluster(format!(
                "the daemon on {host} did not exit within 30 s of SIGTERM"
            )));
        }
        self.reap(host);
        Ok(())
    }

    /// Collects exited daemons of `host` so no zombie is left.
    fn reap(&mut self, host: &str) {
        self.daemons
            .retain_mut(|(h, child)| h != host || child.try_wait().map_or(true, |s| s.is_none()));
    }

    /// Runs the CLI on `host`.
    pub fn cli(&self, host: &str, args: &[&str]) -> Result<Output> {
        self.lab
            .command(host, &self.exes.holdfast)?
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::io(format!("running holdfast {} on {host}", args.join(" ")), e))
    }

    /// Runs the CLI on `host` and fails unless it succeeds.
    pub fn run_cli_checked(&self, host: &str, args: &[&str]) -> Result<Output> {
        let out = self.cli(host, args)?;
        if !out.status.success() {
            return Err(LabError::Cluster(format!(
                "holdfast {} on {host} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(out)
    }

    /// The module's state on `host`, or `None` when its daemon does not answer.
    pub fn state(&self, host: &str) -> Option<NodeState> {
        let out = self
            .cli(host, &["state", "-m", &self.options.module, "--json"])
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let mut states: Vec<NodeState> = serde_json::from_slice(&out.stdout).ok()?;
        states.pop()
    }

    /// Builds the lab, starts the module on both nodes and waits until the
    /// primary runs the application: (lab, primary, secondary).
    pub fn started(
        exes: &Executables,
        options: MirrorOptions,
        timeout: Duration,
    ) -> Result<(Self, &'static str, &'static str)> {
        let cluster = Self::create(exes, options)?;
        cluster.start_module()?;
        let (prim, second) = cluster.wait_pair(timeout)?;
        if !cluster.wait_app(prim, timeout) {
            return Err(LabError::Cluster(format!(
                "the application did not start on {prim} within {timeout:?}"
            )));
        }
        Ok((cluster, prim, second))
    }

    /// The module's state on every node, in node order.
    pub fn states(&self) -> Vec<Option<NodeState>> {
        self.lab.nodes().iter().map(|h| self.state(h)).collect()
    }

    /// Waits until `cond` holds on the states of every node; returns them.
    pub fn wait_all(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&[Option<NodeState>]) -> bool,
    ) -> Result<Vec<Option<NodeState>>> {
        let mut last = Vec::new();
        if wait_until(timeout, Duration::from_millis(50), || {
            last = self.states();
            cond(&last)
        }) {
            Ok(last)
        } else {
            Err(LabError::Cluster(format!(
                "states did not settle within {timeout:?}: {last:?}"
            )))
        }
    }

    /// `holdfast start` on every node.
    pub fn start_module(&self) -> Result<()> {
        for host in self.lab.nodes() {
            self.run_cli_checked(&host, &["start", "-m", &self.options.module])?;
        }
        Ok(())
    }

    /// Waits for a settled PRIM/SECOND pair; returns (primary, secondary).
    pub fn wait_pair(&self, timeout: Duration) -> Result<(&'static str, &'static str)> {
        let (node1, _) = self.wait_states(timeout, |a, b| {
            (settled(a, "PRIM") && settled(b, "SECOND"))
                || (settled(a, "SECOND") && settled(b, "PRIM"))
        })?;
        Ok(if settled(&node1, "PRIM") {
            ("node1", "node2")
        } else {
            ("node2", "node1")
        })
    }

    /// Waits until `cond` holds on the states of node1 and node2.
    pub fn wait_states(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&Option<NodeState>, &Option<NodeState>) -> bool,
    ) -> Result<(Option<NodeState>, Option<NodeState>)> {
        let states = self.wait_all(timeout, |s| cond(&s[0], &s[1]))?;
        Ok((states[0].clone(), states[1].clone()))
    }

    /// Waits until `prim` is PRIM mirroring every replicated directory, and
    /// the other nodes SECOND.
    pub fn wait_mirroring(&self, prim: &str, timeout: Duration) -> Result<()> {
        let p = self
            .lab
            .nodes()
            .iter()
            .position(|h| h == prim)
            .ok_or_else(|| LabError::Cluster(format!("no node {prim}")))?;
        self.wait_all(timeout, |s| {
            settled(&s[p], "PRIM")
                && replicating(&s[p], "mirroring")
                && s.iter()
                    .enumerate()
                    .all(|(i, st)| i == p || settled(st, "SECOND"))
        })
        .map(drop)
    }

    /// Every path under `dir` on `host`, then each file's SHA-256: equal on
    /// two hosts when their trees hold the same names and contents.
    pub fn tree_digest(&self, host: &str, dir: &str) -> Result<String> {
        let out = self.sh(
            host,
            &format!("cd {dir} && find . | sort && find . -type f | sort | xargs -r sha256sum"),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `host` holds the virtual IP [`VIP`] (on its network 0 interface).
    pub fn holds_vip(&self, host: &str) -> Result<bool> {
        self.lab
            .run_in_netns(host, || holdfast_network::Vip::holds("eth0", VIP))?
            .map_err(|e| LabError::Cluster(format!("reading the addresses of {host}: {e}")))
    }

    /// The pid of the sample application on `host`, if it runs there.
    pub fn app_pid(&self, host: &str) -> Option<i32> {
        let path = self.srv(host).ok()?.join("app.pid");
        let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        let alive = Path::new(&format!("/proc/{pid}")).exists()
            && self
                .lab
                .host_pids(host)
                .is_ok_and(|pids| pids.contains(&pid));
        alive.then_some(pid)
    }

    /// The module's directory under the host's `/srv` (events.log, app.log).
    pub fn srv(&self, host: &str) -> Result<PathBuf> {
        Ok(self
            .lab
            .host_dir(host)?
            .join("srv")
            .join(&self.options.module))
    }

    /// Script events recorded by the sample scripts on `host`:
    /// `(unix time in ns, script, arguments)`.
    pub fn events(&self, host: &str) -> Vec<(u128, String, String)> {
        let Ok(path) = self.srv(host).map(|d| d.join("events.log")) else {
            return Vec::new();
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(4, ' ');
                let time = parts.next()?.parse().ok()?;
                let _node = parts.next()?;
                let script = parts.next()?.to_string();
                Some((time, script, parts.next().unwrap_or_default().to_string()))
            })
            .collect()
    }

    /// A replicated directory on `host` reports a problem (`holdfast
    /// state`'s `problem`) containing each of `words`.
    pub fn replication_problem(&self, host: &str, words: &[&str]) -> bool {
        self.state(host).is_some_and(|s| {
            s.replication.iter().any(|d| {
                d.problem
                    .as_deref()
                    .is_some_and(|p| words.iter().all(|w| p.contains(w)))
            })
        })
    }

    /// The module log on `host`, read from its file (also when the daemon
    /// is down); empty if there is none.
    pub fn module_log(&self, host: &str) -> String {
        self.lab
            .host_dir(host)
            .map(|d| {
                d.join("var-lib-holdfast/modules")
                    .join(&self.options.module)
                    .join("module.log")
            })
            .and_then(|p| std::fs::read_to_string(p).map_err(|e| LabError::io("module log", e)))
            .unwrap_or_default()
    }

    /// `path` (absolute, as the host sees it) on `host`'s real disk, as
    /// this machine sees it: under a FUSE mount of the host, the directory
    /// underneath.
    pub fn host_path(&self, host: &str, path: &str) -> Result<PathBuf> {
        Ok(self.lab.host_dir(host)?.join(path.trim_start_matches('/')))
    }

    /// The last resynchronisation `host` completed as a primary (of any
    /// replicated directory), from its daemon's state.
    pub fn last_resync(&self, host: &str) -> Option<LastResync> {
        self.state(host)?
            .replication
            .into_iter()
            .filter_map(|d| d.last_resync)
            .max_by_key(|r| r.ended_at_ms)
    }

    /// Runs `script` with `sh -c` on `host` (in its namespaces).
    pub fn sh(&self, host: &str, script: &str) -> Result<Output> {
        self.lab
            .command(host, "sh")?
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::io(format!("sh -c {script:?} on {host}"), e))
    }

    /// Waits for `host`'s application to run (bounded).
    pub fn wait_app(&self, host: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        wait_until(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(50),
            || self.app_pid(host).is_some(),
        )
    }
}

impl Drop for MirrorLab {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| LabError::io(format!("chmod {}", path.display()), e))
}
