//! `holdfast cluster …`, `holdfast user …`, `holdfast token …` and
//! `holdfast audit`: clients of the API's cluster, users, tokens and audit
//! routes (crates/api/src/routes/).

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use holdfast_api::access::audit::AuditEntry;
use holdfast_api::access::Role;
use holdfast_api::routes::cluster::{
    ClusterStatus, EnrolmentAnswer, EnrolmentRequest, InitAnswer, InitRequest, JoinRequest,
};
use holdfast_api::routes::users::{NewToken, NewUser, TokenView, UserChange, UserView};
use holdfast_daemon::client::ApiClient;

use crate::block;

#[derive(Subcommand, Debug)]
pub enum MembershipCmd {
    /// Create the cluster on this node: its CA, this node's certificate,
    /// the first admin user (password printed once) and an enrolment token
    /// for the next node. The HTTPS API starts.
    Init {
        /// The cluster's name.
        #[arg(long, default_value = "holdfast")]
        name: String,
        /// Where other nodes reach this node's API (address:port); default:
        /// `address` or `listen` of /etc/holdfast/api.toml.
        #[arg(long)]
        address: Option<SocketAddr>,
    },
    /// A new one-time enrolment token for a joining node (on the node
    /// holding the CA, the one that ran `init`).
    Token {
        /// How long it is valid.
        #[arg(long, default_value = "1h")]
        valid_for: String,
    },
    /// Join the cluster with an enrolment token: this node receives a
    /// certificate signed by the cluster's CA, and the users. With an
    /// operator's certificates in /etc/holdfast/pki/, `--via` a member
    /// instead.
    Join {
        #[arg(required_unless_present = "via")]
        token: Option<String>,
        /// A member's API address (address:port), which this node's own
        /// certificate (an operator's) convinces.
        #[arg(long, conflicts_with = "token")]
        via: Option<SocketAddr>,
        #[arg(long)]
        address: Option<SocketAddr>,
    },
    /// Members, CA, certificate expiry.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Renew this node's certificate (a new key, signed by the CA).
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Users and their roles.
    List,
    /// Add a user; the password is read from standard input (one line),
    /// or generated and printed when --generate is given.
    Add {
        name: String,
        #[arg(long)]
        role: Role,
        #[arg(long)]
        generate: bool,
    },
    /// Change a user's role.
    Role { name: String, role: Role },
    /// Set a user's password (read from standard input, one line).
    Passwd { name: String },
    /// Remove a user (their sessions end).
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// API tokens (never their secrets).
    List,
    /// Create a token; it is printed once and never shown again.
    Create {
        /// What it is for.
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: Role,
        /// How long it is valid, e.g. 30d.
        #[arg(long, default_value = "90d")]
        expires_in: String,
    },
    /// Revoke a token by its id.
    Revoke { id: String },
}

pub fn membership(client: &ApiClient, cmd: MembershipCmd) -> Result<ExitCode> {
    match cmd {
        MembershipCmd::Init { name, address } => {
            let answer: InitAnswer = block(client.post(
                "/v1/cluster/init",
                &InitRequest {
                    cluster: name,
                    address,
                },
            ))?;
            println!(
                "cluster {} created; CA fingerprint {}",
                answer.cluster, answer.ca_fingerprint
            );
            println!(
                "administrator: {}  password: {}",
                answer.admin_user, answer.admin_password
            );
            println!(
                "(the password is shown only now; change it with `holdfast user passwd {}`)",
                answer.admin_user
            );
            match &answer.enrolment {
                Some(enrolment) => print_enrolment(enrolment),
                None => println!(
                    "the certificates are the operator's: on each other node, with its own in /etc/holdfast/pki/, run\n  holdfast cluster join --via <this node's address:port>"
                ),
            }
        }
        MembershipCmd::Token { valid_for } => {
            let answer: EnrolmentAnswer = block(client.post(
                "/v1/cluster/tokens",
                &EnrolmentRequest {
                    valid_for: Some(valid_for),
                },
            ))?;
            print_enrolment(&answer);
        }
        MembershipCmd::Join {
            token,
            via,
            address,
        } => {
            let status: ClusterStatus = block(client.post(
                "/v1/cluster/join",
                &JoinRequest {
                    token,
                    via,
                    address,
                },
            ))?;
            println!("node {} joined cluster {}", status.node, status.cluster);
            print_status(&status);
        }
        MembershipCmd::Status { json } => {
            let status: ClusterStatus = block(client.get("/v1/cluster"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        MembershipCmd::Rotate => {
            let status: ClusterStatus = block(client.post("/v1/cluster/rotate", &()))?;
            println!("certificate of {} renewed", status.node);
            print_status(&status);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_enrolment(answer: &EnrolmentAnswer) {
    println!(
        "to add a node, run on it (valid until {}, once):",
        time(answer.expires_at as i64)
    );
    println!("  holdfast cluster join {}", answer.token);
}

fn print_status(status: &ClusterStatus) {
    if status.cluster.is_empty() {
        println!(
            "node {} is not a member of a cluster (holdfast cluster init / join)",
            status.node
        );
        return;
    }
    println!(
        "cluster {} (record version {}), CA on {}",
        status.cluster, status.version, status.ca_node
    );
    for node in &status.nodes {
        println!("  {:<12} {}", node.name, node.address);
    }
    if let Some(c) = &status.certificate {
        println!(
            "certificate of {}: expires {} ({} days)",
            status.node,
            time(c.not_after),
            c.days_left
        );
    }
    if let Some(c) = &status.ca_certificate {
        println!(
            "CA certificate: expires {} ({} days), fingerprint {}",
            time(c.not_after),
            c.days_left,
            c.fingerprint
        );
    }
}

fn time(unix_seconds: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn password_from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!("no password on standard input");
    }
    Ok(password)
}

pub fn user(client: &ApiClient, cmd: UserCmd) -> Result<ExitCode> {
    match cmd {
        UserCmd::List => {
            let users: Vec<UserView> = block(client.get("/v1/users"))?;
            for u in users {
                println!("{:<20} {}", u.name, u.role.as_str());
            }
        }
        UserCmd::Add {
            name,
            role,
            generate,
        } => {
            let password = if generate {
                holdfast_api::access::secrets::new_password()
            } else {
                password_from_stdin()?
            };
            let user: UserView = block(client.post(
                "/v1/users",
                &NewUser {
                    name,
                    role,
                    password: password.clone(),
                },
            ))?;
            println!("user {} added ({})", user.name, user.role.as_str());
            if generate {
                println!("password: {password}");
            }
        }
        UserCmd::Role { name, role } => {
            let user: UserView = block(client.put(
                &format!("/v1/users/{name}"),
                &UserChange {
                    role: Some(role),
                    password: None,
                },
            ))?;
            println!("user {} is now {}", user.name, user.role.as_str());
        }
        UserCmd::Passwd { name } => {
            let password = password_from_stdin()?;
            let _: UserView = block(client.put(
                &format!("/v1/users/{name}"),
                &UserChange {
                    role: None,
                    password: Some(password),
                },
            ))?;
            println!("password of {name} changed; their sessions ended");
        }
        UserCmd::Remove { name } => {
            let () = block(client.delete(&format!("/v1/users/{name}")))?;
            println!("user {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn token(client: &ApiClient, cmd: TokenCmd) -> Result<ExitCode> {
    match cmd {
        TokenCmd::List => {
            let tokens: Vec<TokenView> = block(client.get("/v1/tokens"))?;
            for t in tokens {
                println!(
                    "{}  {:<8} expires {}  {} (by {})",
                    t.id,
                    t.role.as_str(),
                    time(t.expires_at as i64),
                    t.name,
                    t.created_by
                );
            }
        }
        TokenCmd::Create {
            name,
            role,
            expires_in,
        } => {
            let t: TokenView = block(client.post(
                "/v1/tokens",
                &NewToken {
                    name,
                    role,
                    expires_in,
                },
            ))?;
            println!(
                "token {} ({}) expires {}:",
                t.id,
                t.role.as_str(),
                time(t.expires_at as i64)
            );
            println!("{}", t.token.unwrap_or_default());
        }
        TokenCmd::Revoke { id } => {
            let () = block(client.delete(&format!("/v1/tokens/{id}")))?;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(client: &ApiClient, count: usize) -> Result<ExitCode> {
    let entries: Vec<AuditEntry> = block(client.get(&format!("/v1/audit?count={count}")))?;
    for e in entries {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms);
        println!(
            "{} | {} | {} | {} | {}",
            humantime::format_rfc3339_millis(t),
            e.who,
            e.source,
            e.action,
            e.status
        );
    }
    Ok(ExitCode::SUCCESS)
}
