//! The API's state: the daemon's registry, this node's certificates and
//! TLS settings (replaced whole at a rotation), the cluster's record, the
//! sessions and the audit log.

use std::sync::Arc;

use holdfast_daemon::registry::Registry;
use holdfast_daemon::{Daemon, Paths};
use holdfast_pki::rustls::ClientConfig;
use holdfast_pki::{Identity, PkiFiles};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::access::audit::AuditLog;
use crate::access::sessions::Sessions;
use crate::record::{self, Record};
use crate::{ApiError, ServeError, Settings};

#[derive(Debug)]
pub struct App {
    pub registry: Arc<Registry>,
    pub node: String,
    pub paths: Paths,
    pub settings: Settings,
    pub pki: PkiFiles,
    pub sessions: Sessions,
    pub audit: Arc<AuditLog>,
    /// The cluster's timeline (this node's events and those relayed).
    pub events: Arc<holdfast_daemon::events::EventBus>,
    /// The metrics counted between scrapes.
    pub counters: Arc<crate::counters::Counters>,
    record: RwLock<Record>,
    /// This node's TLS, once it is a member; `https.rs` serves with it.
    tls: watch::Sender<Option<Tls>>,
    /// What the HTTPS listener made of it.
    serving: watch::Sender<Serving>,
    /// Changes to the record, one at a time.
    changing: tokio::sync::Mutex<()>,
}

/// The HTTPS listener's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// Not a member yet: nothing to serve with.
    NotMember,
    Listening,
    /// The listener could not start (the address is taken, say).
    Failed(String),
}

/// This node's TLS, from its certificates.
#[derive(Clone)]
pub struct Tls {
    pub identity: Identity,
    pub acceptor: TlsAcceptor,
    /// Calling other nodes, with this node's certificate.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("node", &self.identity.node)
            .finish_non_exhaustive()
    }
}

impl Tls {
    pub fn new(identity: Identity) -> Result<Self, holdfast_pki::PkiError> {
        let server = holdfast_pki::server_config(&identity)?;
        let client = holdfast_pki::client_config(&identity.ca, Some(&identity))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            client: Arc::new(client),
            identity,
        })
    }
}

impl App {
    pub fn new(daemon: &Daemon, settings: Settings) -> Result<Arc<Self>, ServeError> {
        let dir = record::dir(&daemon.paths.state_dir);
        create_private_dir(&dir).map_err(ServeError::Settings)?;
        let record = record::load(&record::path(&daemon.paths.state_dir))
            .map_err(ServeError::Settings)?
            .unwrap_or_default();
        let pki = PkiFiles::new(daemon.paths.conf_dir.join("pki"));
        let tls = if pki.exists() {
            Some(Tls::new(pki.identity()?)?)
        } else {
            None
        };
        Ok(Arc::new(Self {
            registry: daemon.registry.clone(),
            events: daemon.events.clone(),
            counters: Arc::default(),
            node: daemon.node.clone(),
            paths: daemon.paths.clone(),
            sessions: Sessions::new(settings.session_idle),
            settings,
            pki,
            audit: Arc::new(AuditLog::new(dir.join("audit.log"))),
            record: RwLock::new(record),
            tls: watch::Sender::new(tls),
            serving: watch::Sender::new(Serving::NotMember),
            changing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The cluster's record as this node has it.
    pub fn record(&self) -> Record {
        self.record.read().clone()
    }

    pub fn tls(&self) -> Option<Tls> {
        self.tls.borrow().clone()
    }

    /// Serves with `tls` from now on (a rotation: the next connections).
    pub fn set_tls(&self, tls: Tls) {
        self.tls.send_replace(Some(tls));
    }

    pub fn watch_tls(&self) -> watch::Receiver<Option<Tls>> {
        self.tls.subscribe()
    }

    pub fn set_serving(&self, serving: Serving) {
        self.serving.send_replace(serving);
    }

    /// This node's first TLS (after `init` or `join`): answers once the
    /// HTTPS listener serves with it, or why it cannot.
    pub async fn become_member(&self, tls: Tls) -> Result<(), ApiError> {
        let mut serving = self.serving.subscribe();
        self.set_tls(tls);
        let settled = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            serving.wait_for(|s| *s != Serving::NotMember),
        )
        .await
        .map_err(|_| ApiError::internal("the HTTPS API did not start within 10 s"))?
        .map_err(ApiError::internal)?
        .clone();
        match settled {
            Serving::Failed(reason) => Err(ApiError::internal(reason)),
            _ => Ok(()),
        }
    }

    /// This node's TLS, or the refusal of a node that has none yet.
    pub fn member_tls(&self) -> Result<Tls, ApiError> {
        self.tls().ok_or_else(|| {
            ApiError::conflict(format!(
                "node {} is not a member of a cluster yet: run `holdfast cluster init` or `holdfast cluster join`",
                self.node
            ))
        })
    }

    /// Applies `change` to a copy of the record; if it succeeds, the copy,
    /// one version higher, is stored, becomes this node's, and is pushed to
    /// the other members before answering, so that a user or token made
    /// here works at once on every node that answers (one that is down
    /// catches up when it starts).
    pub async fn change<T>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Record) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let (answer, next) = {
            let _one_at_a_time = self.changing.lock().await;
            let mut next = self.record();
            let answer = change(&mut next)?;
            next.version += 1;
            self.store(next.clone()).await?;
            (answer, next)
        };
        // Pushed without holding the lock: two nodes pushing to each other
        // at once must not wait on each other.
        crate::peers::push_record(self, &next).await;
        Ok(answer)
    }

    /// Takes `record` if it is newer than this node's; says whether it did.
    pub async fn adopt(&self, record: Record) -> Result<bool, ApiError> {
        let _one_at_a_time = self.changing.lock().await;
        if !record.newer_than(&self.record()) {
            return Ok(false);
        }
        self.store(record).await?;
        Ok(true)
    }

    async fn store(&self, record: Record) -> Result<(), ApiError> {
        let path = record::path(&self.paths.state_dir);
        let copy = record.clone();
        tokio::task::spawn_blocking(move || record::store(&path, &copy))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        *self.record.write() = record;
        Ok(())
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("{}: {e}", dir.display()))
}
