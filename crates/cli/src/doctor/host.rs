//! The host's side: privileges, the cluster key, FUSE, nftables, the kernel
//! features the daemon calls on, and the clock.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use holdfast_daemon::Paths;
use holdfast_key::ClusterKey;
use holdfast_network::Vip;

use super::{Finding, Host};
use holdfast_config::Mode;

pub(super) fn privileges() -> Finding {
    if nix::unistd::geteuid().is_root() {
        Finding::ok("privileges", "running as root, as the daemon does")
    } else {
        Finding::warn(
            "privileges",
            "not running as root: /dev/fuse, nftables, ports and ping may be reported for lack of rights",
            "run holdfast doctor as root (the daemon runs as root)",
        )
    }
}

pub(super) fn cluster_key(paths: &Paths) -> Finding {
    let path = paths.cluster_key();
    let check = "cluster key";
    match ClusterKey::load(&path) {
        Err(e) => Finding::fail(
            check,
            e.to_string(),
            format!(
                "holdfast cluster keygen --out {} on one node, then copy it (mode 0600) to the others",
                path.display()
            ),
        ),
        Ok(_) => match std::fs::metadata(&path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => Finding::warn(
                check,
                format!(
                    "{} is readable by others (mode {:o})",
                    path.display(),
                    m.permissions().mode() & 0o777
                ),
                format!("chmod 600 {}", path.display()),
            ),
            _ => Finding::ok(check, format!("{} loads", path.display())),
        },
    }
}

/// FUSE: the kernel's file system and its device (replicated directories
/// are FUSE mounts); `fusermount3`, which the daemon itself does not need
/// (it mounts as root), to clear a mount by hand.
pub(super) fn fuse(host: &Host) -> Vec<Finding> {
    let needed = host.modules.iter().any(|m| !m.replicated.is_empty());
    let known = std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("fuse"))
        })
        .unwrap_or(false);
    let device = std::fs::metadata("/dev/fuse").map(|m| m.file_type().is_char_device());
    let fuse = match (known, device) {
        (false, _) => Finding::needed(
            needed,
            "fuse",
            "the kernel has no FUSE file system (not in /proc/filesystems)",
            "modprobe fuse (and add fuse to /etc/modules-load.d/), or use a kernel built with CONFIG_FUSE_FS",
        ),
        (true, Ok(true)) => match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            Ok(_) => Finding::ok("fuse", "the kernel's FUSE and /dev/fuse are usable"),
            Err(e) => Finding::needed(
                needed,
                "fuse",
                format!("/dev/fuse cannot be opened: {e}"),
                "run as root; in a container, give it /dev/fuse (--device /dev/fuse)",
            ),
        },
        (true, _) => Finding::needed(
            needed,
            "fuse",
            "/dev/fuse is missing or not a character device",
            "mknod /dev/fuse c 10 229 (or let udev create it: modprobe fuse)",
        ),
    };
    let fusermount = match which::which("fusermount3") {
        Ok(path) => Finding::ok("fusermount3", format!("{}", path.display())),
        Err(_) => Finding::warn(
            "fusermount3",
            "not found in PATH (the daemon mounts as root without it)",
            "apt install fuse3, to unmount a replicated directory by hand (fusermount3 -u DIR)",
        ),
    };
    vec![fuse, fusermount]
}

/// `nft`, which a farm module's kernel filter is programmed with.
pub(super) fn nftables(host: &Host) -> Finding {
    let needed = host.any(Mode::Farm);
    let why = if needed {
        "farm modules filter their traffic with it"
    } else {
        "needed by farm modules only"
    };
    let Ok(nft) = which::which("nft") else {
        let path = std::env::var("PATH").unwrap_or_default();
        return Finding::needed(
            needed,
            "nftables",
            format!("nft not found in PATH ({path}): {why}"),
            "apt install nftables",
        );
    };
    match Command::new(&nft).args(["list", "tables"]).output() {
        Ok(out) if out.status.success() => {
            Finding::ok("nftables", format!("{} lists the tables", nft.display()))
        }
        Ok(out) => Finding::needed(
            needed,
            "nftables",
            format!(
                "{} list tables failed: {}",
                nft.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "run as root on a kernel with nf_tables (modprobe nf_tables)",
        ),
        Err(e) => Finding::needed(
            needed,
            "nftables",
            format!("{} cannot run: {e}", nft.display()),
            "apt install --reinstall nftables",
        ),
    }
}

/// The kernel's interfaces the daemon calls on: route netlink (virtual IPs,
/// and the peer checks' local addresses) and packet sockets (gratuitous ARP,
/// a farm's ARP responder). Network namespaces are for the lab only.
pub(super) fn kernel(host: &Host) -> Vec<Finding> {
    let vip = host.modules.iter().any(|m| m.vip.is_some());
    let netlink = match Vip::host_addresses() {
        Ok(addresses) => Finding::ok(
            "netlink",
            format!("{} IPv4 addresses listed by route netlink", addresses.len()),
        ),
        Err(e) => Finding::needed(
            vip,
            "netlink",
            e.to_string(),
            "run as root (CAP_NET_ADMIN) on a kernel with rtnetlink",
        ),
    };
    let packet = match socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::ETH_P_ARP.to_be())),
    ) {
        Ok(_) => Finding::ok("packet sockets", "available (gratuitous ARP)"),
        Err(e) => Finding::needed(
            vip,
            "packet sockets",
            format!("cannot open one: {e}"),
            "run as root (CAP_NET_RAW) on a kernel with CONFIG_PACKET",
        ),
    };
    vec![netlink, packet]
}

/// Whether the kernel's clock is synchronised, as every time service
/// (chrony, systemd-timesyncd, ntpd) tells it through adjtimex, and
/// `timedatectl` reads it back. Timeouts and leases use monotonic clocks;
/// the module logs of two nodes are read side by side, and certificates
/// need the right time.
pub(super) fn clock() -> Finding {
    // SAFETY: `timex` is plain data for which all zeroes is a valid value.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: with `modes` 0 adjtimex only reads the kernel's clock state
    // into `timex`, a valid and exclusively borrowed structure.
    let state = unsafe { libc::adjtimex(&mut timex) };
    // timedated's rule: synchronised, with a maximum error below 16 s.
    let synced = state != -1
        && state != libc::TIME_ERROR
        && timex.status & libc::STA_UNSYNC == 0
        && timex.maxerror < 16_000_000;
    if synced {
        return Finding::ok(
            "clock",
            format!(
                "synchronised (estimated error {} µs)",
                timex.esterror.max(0)
            ),
        );
    }
    let services: Vec<String> =
        super::holders::running(&["chronyd", "systemd-timesyn", "ntpd", "ntpsec", "openntpd"]);
    let fix = if services.is_empty() {
        "apt install chrony (or systemctl enable --now systemd-timesyncd)".to_string()
    } else {
        format!(
            "{} runs but has not synchronised the clock yet: check its servers (chronyc sources, or timedatectl timesync-status)",
            services.join(", ")
        )
    };
    Finding::warn("clock", "not synchronised (the kernel says so)", fix)
}
