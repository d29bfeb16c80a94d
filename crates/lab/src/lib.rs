//! holdfast-lab: test hosts on this one machine, for tests, the demo and
//! benchmarks.
//!
//! A [`Lab`] is a set of hosts (`node1`..`nodeN`, optionally `client`), each a
//! network namespace `hf<id>-<host>` with its own persistent mount namespace,
//! joined by one Linux bridge per heartbeat network living in a "switch"
//! namespace `hf<id>-sw`. Addresses are only in 198.18.0.0/15 (node i on
//! network k: `198.18.k.(10+i)/24`, the client `198.18.k.100/24`), and nothing
//! is added to the machine's own network namespace. Inside every host,
//! `/var/lib/holdfast`, `/etc/holdfast` and `/srv` are that host's private
//! directories (under [`LabHandle::host_dir`] in the machine's view), so
//! configured paths are identical on every host, as on real servers.
//!
//! Faults: [`LabHandle::kill_host`] (`kill -9` of everything on a host),
//! [`LabHandle::link_down`], [`LabHandle::partition`] and
//! [`LabHandle::set_loss`] (nftables rules in the switch's bridge table;
//! this kernel has no netem).
//!
//! The lab is a guard: dropping it, even while a test panics, removes every
//! process, namespace, mount and directory it made. A registry under
//! `/run/holdfast-lab/<id>/lab.json` lets another process [`attach`] to a
//! running lab, and [`clean_stale`] remove those whose owner died.
//!
//! Needs root, `ip` (iproute2), `nsenter`/`unshare` (util-linux) and `nft`.

mod cleanup;
pub mod cluster;
mod error;
mod exec;
mod executables;
mod handle;
mod lab;
mod mounts;
mod netns;
pub mod records;
mod registry;
pub mod syscalls;

pub use cleanup::{attach, clean_stale, list_labs};
pub use error::{LabError, Result};
pub use exec::wait_until;
pub use executables::{Executables, HOLDFAST, LAB_TOOL};
pub use handle::LabHandle;
pub use lab::{Lab, LabSpec, MAX_HOSTS, MAX_NETWORKS};
pub use registry::{HostInfo, LabInfo, LAB_ROOT};

/// Name of the optional client host.
pub const CLIENT: &str = "client";
