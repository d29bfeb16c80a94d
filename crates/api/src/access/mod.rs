//! Who calls, and what they may do: **where a caller's role is checked**,
//! in one place ([`guard`], which every route passes with the [`Access`]
//! it declares in `routes.rs`).
//!
//! - [`Role`]: admin (configure), control (commands), monitor (read);
//! - [`Caller`]: root on the Unix socket, a user's session, an API token, a
//!   node (its certificate), or a user relayed by a node;
//! - `sessions.rs`: login sessions (cookie, CSRF token, idle expiry);
//! - `signed.rs`: session tokens every member accepts (the console's);
//! - `cors.rs`: pages of the other members' consoles may call this node;
//! - `secrets.rs`: argon2id passwords, API token secrets;
//! - `audit.rs`: every command and its result, with who and from where.

pub mod audit;
pub mod cors;
pub mod guard;
pub mod secrets;
pub mod sessions;
pub mod signed;

pub use guard::{guard, now_ms, Connection};

use serde::{Deserialize, Serialize};

/// A user's or token's role, SafeKit's three: each allows what the one
/// before it does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads state, logs, the cluster view.
    Monitor,
    /// Also runs commands: start, stop, swap, prim, second, switches.
    Control,
    /// Also configures: modules, users, tokens, the cluster.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Control => "control",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "monitor" => Ok(Role::Monitor),
            "control" => Ok(Role::Control),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (admin, control or monitor)"
            )),
        }
    }
}

/// What a route requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (login, the CA certificate, enrolment with its token).
    Public,
    /// A caller with at least this role.
    Role(Role),
    /// Another node of the cluster, by its certificate (the record's
    /// exchange, certificate rotation).
    Node,
}

/// Who is calling, once identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// On the Unix socket: root on this node, admin.
    Root,
    /// A logged-in user's session.
    Session {
        user: String,
        role: Role,
        id: String,
    },
    /// An API token.
    Token {
        id: String,
        name: String,
        role: Role,
    },
    /// Another node, by its certificate.
    Node(String),
    /// A caller a node relayed, as that node identified it.
    Relayed {
        who: String,
        role: Role,
        via: String,
    },
    /// Nobody identified (public routes only).
    Anonymous,
}

impl Caller {
    /// The role it acts with; nodes act for no user.
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Root => Some(Role::Admin),
            Caller::Session { role, .. }
            | Caller::Token { role, .. }
            | Caller::Relayed { role, .. } => Some(*role),
            Caller::Node(_) | Caller::Anonymous => None,
        }
    }

    /// As the audit log and the refusals name it.
    pub fn who(&self) -> String {
        match self {
            Caller::Root => "root".into(),
            Caller::Session { user, .. } => user.clone(),
            Caller::Token { id, name, .. } => format!("token {id} ({name})"),
            Caller::Node(node) => format!("node {node}"),
            Caller::Relayed { who, via, .. } => format!("{who} via {via}"),
            Caller::Anonymous => "anonymous".into(),
        }
    }

    pub fn allowed(&self, access: Access) -> bool {
        match access {
            Access::Public => true,
            // A node reads what monitors read (the cluster view asks every
            // node for its modules), and acts for nobody.
            Access::Role(Role::Monitor) if matches!(self, Caller::Node(_)) => true,
            Access::Role(needed) => self.role().is_some_and(|r| r >= needed),
            Access::Node => matches!(self, Caller::Node(_)),
        }
    }
}
