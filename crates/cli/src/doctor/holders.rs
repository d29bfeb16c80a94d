//! Who holds a port, and which processes run, read from `/proc` (the
//! socket tables of this network namespace, and every process's open
//! descriptors).

use std::collections::BTreeSet;

use procfs::net::TcpState;
use procfs::process::FDTarget;

/// A transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub(super) fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// The process holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Holder {
    pub pid: i32,
    /// Its command name.
    pub name: String,
    /// A `holdfast` executable: the daemon.
    pub ours: bool,
}

/// Who holds `port` (TCP: listening on it; UDP: bound to it), on any
/// address: `Ok(None)` when nobody does, `Ok(Some(None))` when a socket
/// holds it but no process was found with it (another user's, unreadable).
pub(super) fn holder(
    port: u16,
    transport: Transport,
) -> procfs::ProcResult<Option<Option<Holder>>> {
    let inodes: BTreeSet<u64> = match transport {
        Transport::Tcp => procfs::net::tcp()?
            .into_iter()
            .chain(procfs::net::tcp6()?)
            .filter(|e| e.state == TcpState::Listen && e.local_address.port() == port)
            .map(|e| e.inode)
            .collect(),
        Transport::Udp => procfs::net::udp()?
            .into_iter()
            .chain(procfs::net::udp6()?)
            .filter(|e| e.local_address.port() == port)
            .map(|e| e.inode)
            .collect(),
    };
    if inodes.is_empty() {
        return Ok(None);
    }
    for process in procfs::process::all_processes()?.flatten() {
        let Ok(fds) = process.fd() else { continue };
        let holds = fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(inode) if inodes.contains(&inode)));
        if holds {
            let name = process.stat().map(|s| s.comm).unwrap_or_default();
            let ours = process
                .exe()
                .ok()
                .and_then(|exe| exe.file_name().map(|n| n == "holdfast"))
                .unwrap_or(false);
            return Ok(Some(Some(Holder {
                pid: process.pid,
                name,
                ours,
            })));
        }
    }
    Ok(Some(None))
}

/// Which of `names` (command names, as `/proc/PID/stat` gives them: 15
/// characters at most) run.
pub(super) fn running(names: &[&str]) -> Vec<String> {
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let found: BTreeSet<String> = processes
        .flatten()
        .filter_map(|p| p.stat().ok().map(|s| s.comm))
        .filter(|comm| names.contains(&comm.as_str()))
        .collect();
    found.into_iter().collect()
}
