//! The cluster: created by `init` on one node (its CA, this node's
//! certificate, a first admin user), joined by others with a one-time
//! enrolment token (`join` here asks the CA's node's `enrol`, pinning the CA
//! by the token's fingerprint), certificates renewed by `rotate`, and the
//! record exchanged between members.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::{Extension, Json};
use holdfast_pki::{certificate_facts, EnrolmentToken, Identity, SigningRequest};
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use crate::access::{secrets, Caller, Connection};
use crate::app::Tls;
use crate::record::{self, Member, Record, User};
use crate::{peers, ApiError, App, Shared};

/// How long an enrolment token is valid unless asked otherwise.
const ENROLMENT_VALIDITY: Duration = Duration::from_secs(3600);

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InitRequest {
    /// The cluster's name.
    pub cluster: String,
    /// Where other nodes reach this node's API (default: the settings').
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub address: Option<SocketAddr>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InitAnswer {
    pub cluster: String,
    pub ca_fingerprint: String,
    /// The first administrator, and its password (shown once).
    pub admin_user: String,
    pub admin_password: String,
    /// None with an operator's certificates (no CA key here): the other
    /// nodes join with `via`.
    pub enrolment: Option<EnrolmentAnswer>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrolmentRequest {
    /// How long the token is valid, e.g. "1h" (the default).
    #[serde(default)]
    pub valid_for: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrolmentAnswer {
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Exactly one of `token` (certificates from the cluster's CA) and `via`
/// (this node has an operator's certificate already).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinRequest {
    /// As printed by `holdfast cluster init` or `holdfast cluster token`.
    #[serde(default)]
    pub token: Option<String>,
    /// A member's API address, asked over mutual TLS with this node's
    /// operator-provided certificate.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub via: Option<SocketAddr>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub address: Option<SocketAddr>,
}

/// What a node with an operator's certificate asks a member.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberRequest {
    #[schema(value_type = String)]
    pub address: SocketAddr,
}

/// What a joining node sends the CA's node.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Enrol {
    pub secret: String,
    pub node: String,
    #[schema(value_type = String)]
    pub address: SocketAddr,
    /// PEM certificate request; the key stays on the joining node.
    pub request: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Enrolled {
    pub certificate: String,
    pub ca: String,
    pub record: Record,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateRequest {
    pub request: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateAnswer {
    pub certificate: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateView {
    /// Unix seconds.
    pub not_after: i64,
    pub days_left: i64,
    pub fingerprint: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    #[schema(value_type = String)]
    pub address: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    pub node: String,
    /// Empty until the node is a member.
    pub cluster: String,
    pub ca_node: String,
    pub ca_fingerprint: String,
    /// The record's version (the same on every node once settled).
    pub version: u64,
    pub nodes: Vec<NodeView>,
    pub certificate: Option<CertificateView>,
    pub ca_certificate: Option<CertificateView>,
}

fn certificate_view(pem: &str) -> Option<CertificateView> {
    let facts = certificate_facts(pem).ok()?;
    let now = crate::access::now_ms() as i64 / 1000;
    Some(CertificateView {
        not_after: facts.not_after,
        days_left: (facts.not_after - now) / 86400,
        fingerprint: facts.fingerprint,
    })
}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    description = "Members, CA, this node's certificate expiry. Role: monitor.",
    responses((status = 200, body = ClusterStatus), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn status(State(app): Shared) -> Json<ClusterStatus> {
    let record = app.record();
    let tls = app.tls();
    Json(ClusterStatus {
        node: app.node.clone(),
        cluster: record.cluster.clone(),
        ca_node: record.ca_node.clone(),
        ca_fingerprint: record.ca_fingerprint.clone(),
        version: record.version,
        nodes: record
            .nodes
            .iter()
            .map(|(name, m)| NodeView {
                name: name.clone(),
                address: m.address,
            })
            .collect(),
        certificate: tls
            .as_ref()
            .and_then(|t| certificate_view(&t.identity.certificate_pem)),
        ca_certificate: tls
            .as_ref()
            .and_then(|t| certificate_view(&t.identity.ca_pem)),
    })
}

fn not_yet_member(app: &App) -> Result<(), ApiError> {
    let record = app.record();
    if !record.nodes.is_empty() {
        return Err(ApiError::conflict(format!(
            "node {} is already a member of cluster {:?} (CA on {})",
            app.node, record.cluster, record.ca_node
        )));
    }
    Ok(())
}

fn own_address(app: &App, asked: Option<SocketAddr>) -> Result<SocketAddr, ApiError> {
    asked.or(app.settings.reached_at()).ok_or_else(|| {
        ApiError::field(
            "address",
            format!(
                "the address other nodes reach this node's API at is needed (the API listens on {}, which names no address): give --address or set `address` in api.toml",
                app.settings.listen
            ),
        )
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

/// Serves HTTPS with `identity`, this node's first.
async fn serve_with(app: &App, identity: Identity) -> Result<(), ApiError> {
    app.become_member(Tls::new(identity)?).await
}

#[utoipa::path(post, path = "/v1/cluster/init", tag = "cluster",
    description = "Create the cluster on this node. Role: admin.",
    request_body = InitRequest,
    responses((status = 201, body = InitAnswer), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn init(
    State(app): Shared,
    Json(request): Json<InitRequest>,
) -> Result<(StatusCode, Json<InitAnswer>), ApiError> {
    not_yet_member(&app)?;
    if request.cluster.is_empty() || request.cluster.contains(['/', '"']) {
        return Err(ApiError::field(
            "cluster",
            format!("{:?}: a name without / or \"", request.cluster),
        ));
    }
    let address = own_address(&app, request.address)?;
    let password = secrets::new_password();
    // An operator's certificates, already in place, are used as they are.
    let operators = app.tls().map(|tls| tls.identity);
    if let Some(identity) = &operators {
        own_certificate(&app, identity)?;
    }
    let (node, pki, cluster, copy) = (
        app.node.clone(),
        app.pki.clone(),
        request.cluster.clone(),
        password.clone(),
    );
    let (identity, hash) = blocking(move || {
        let identity = match operators {
            Some(identity) => identity,
            None => {
                let ca = holdfast_pki::Authority::generate(&cluster)?;
                let (signing, key) = SigningRequest::generate(&node)?;
                let certificate = ca.sign(&signing, &node, &[address.ip()])?;
                pki.store(
                    ca.certificate_pem(),
                    Some(&ca.key_pem()),
                    &certificate,
                    &key,
                )?;
                pki.identity()?
            }
        };
        let hash = secrets::hash_password(&copy).map_err(ApiError::internal)?;
        Ok((identity, hash))
    })
    .await?;
    let fingerprint = identity.ca_fingerprint();
    let holds_ca = app.pki.ca_key().exists();
    let (node, cluster, fp) = (
        app.node.clone(),
        request.cluster.clone(),
        fingerprint.clone(),
    );
    app.change(move |record| {
        *record = Record {
            version: 0,
            cluster,
            ca_fingerprint: fp,
            // No CA node with an operator's certificates: nobody enrols.
            ca_node: if holds_ca {
                node.clone()
            } else {
                String::new()
            },
            nodes: [(node, Member { address })].into(),
            users: [(
                "admin".to_string(),
                User {
                    role: crate::access::Role::Admin,
                    password_hash: hash,
                },
            )]
            .into(),
            tokens: Default::default(),
            session_key: crate::access::signed::new_key(),
        };
        Ok(())
    })
    .await?;
    serve_with(&app, identity).await?;
    let enrolment = match holds_ca {
        true => Some(new_enrolment(&app, ENROLMENT_VALIDITY).await?),
        false => None,
    };
    tracing::info!("node {} created cluster {:?}", app.node, request.cluster);
    Ok((
        StatusCode::CREATED,
        Json(InitAnswer {
            cluster: request.cluster,
            ca_fingerprint: fingerprint,
            admin_user: "admin".into(),
            admin_password: password,
            enrolment,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/cluster/tokens", tag = "cluster",
    description = "A one-time enrolment token (on the CA's node). Role: admin.",
    request_body = EnrolmentRequest,
    responses((status = 200, body = EnrolmentAnswer), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn enrolment_token(
    State(app): Shared,
    Json(request): Json<EnrolmentRequest>,
) -> Result<Json<EnrolmentAnswer>, ApiError> {
    let validity = match &request.valid_for {
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| ApiError::field("valid_for", format!("{text:?}: {e}")))?,
        None => ENROLMENT_VALIDITY,
    };
    Ok(Json(new_enrolment(&app, validity).await?))
}

/// `<state>/cluster/enrolment.json` on the CA's node: the hashes of the
/// tokens not used yet, with their expiry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Pending {
    tokens: Vec<PendingToken>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PendingToken {
    secret_hash: String,
    expires_at: u64,
}

/// One change of the pending tokens at a time.
static PENDING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn pending_path(app: &App) -> PathBuf {
    record::dir(&app.paths.state_dir).join("enrolment.json")
}

/// Reads the pending tokens, drops the expired ones, applies `change`,
/// writes them back (blocking).
fn with_pending<T>(
    path: &std::path::Path,
    change: impl FnOnce(&mut Pending) -> T,
) -> Result<T, ApiError> {
    let _one = PENDING.lock();
    let mut pending: Pending = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(ApiError::internal)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pending::default(),
        Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
    };
    let now = crate::access::now_ms() / 1000;
    pending.tokens.retain(|t| t.expires_at > now);
    let answer = change(&mut pending);
    let bytes = serde_json::to_vec(&pending).map_err(ApiError::internal)?;
    holdfast_replication::durable::replace(path, &bytes)
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    Ok(answer)
}

async fn new_enrolment(app: &App, validity: Duration) -> Result<EnrolmentAnswer, ApiError> {
    let record = app.record();
    let tls = app.member_tls()?;
    if !app.pki.ca_key().exists() {
        return Err(ApiError::conflict(match record.ca_node.as_str() {
            "" => "the cluster's certificates are the operator's: a node joins with its own (`holdfast cluster join --via <member>`)".to_string(),
            ca_node => format!("this node does not hold the cluster's CA: ask for an enrolment token on {ca_node}"),
        }));
    }
    let address = record
        .nodes
        .get(&app.node)
        .map(|m| m.address)
        .ok_or_else(|| ApiError::internal("this node is missing from the cluster's record"))?;
    let token = EnrolmentToken::new(address, tls.identity.ca_fingerprint());
    let expires_at = crate::access::now_ms() / 1000 + validity.as_secs();
    let entry = PendingToken {
        secret_hash: EnrolmentToken::secret_hash(&token.secret),
        expires_at,
    };
    let path = pending_path(app);
    blocking(move || with_pending(&path, |p| p.tokens.push(entry))).await?;
    Ok(EnrolmentAnswer {
        token: token.to_string(),
        expires_at,
    })
}

#[utoipa::path(post, path = "/v1/cluster/join", tag = "cluster",
    description = "Join a cluster with an enrolment token, or via a member with an operator's certificate. Role: admin.",
    request_body = JoinRequest,
    responses((status = 200, body = ClusterStatus), (status = 502, description = "another node did not answer", body = holdfast_daemon::api::ErrorBody), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn join(
    State(app): Shared,
    Json(request): Json<JoinRequest>,
) -> Result<Json<ClusterStatus>, ApiError> {
    not_yet_member(&app)?;
    let address = own_address(&app, request.address)?;
    let token = match (&request.token, request.via) {
        (Some(token), None) => token,
        (None, Some(via)) => return join_via(&app, via, address).await,
        _ => {
            return Err(ApiError::field(
                "token",
                "give an enrolment token, or (with an operator's certificates) `via`, a member's address; not both",
            ))
        }
    };
    if app.tls().is_some() {
        return Err(ApiError::field(
            "token",
            "this node has certificates already (an operator's?): join with `via` instead",
        ));
    }
    let token = EnrolmentToken::parse(token).map_err(|e| ApiError::field("token", e))?;
    let node = app.node.clone();
    let (signing, key) = blocking(move || Ok(SigningRequest::generate(&node)?)).await?;
    let enrol = Enrol {
        secret: token.secret.clone(),
        node: app.node.clone(),
        address,
        request: signing.0,
    };
    let config = std::sync::Arc::new(holdfast_pki::first_contact_config(&token.fingerprint)?);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let body = Bytes::from(serde_json::to_vec(&enrol).map_err(ApiError::internal)?);
    let ca_node = token.address.to_string();
    let answer = peers::call(
        config,
        token.address,
        Method::POST,
        "/v1/cluster/enrol",
        headers,
        body,
    )
    .await
    .map_err(|reason| ApiError::unreachable(&ca_node, reason))?;
    let enrolled: Enrolled = peers::decode(&ca_node, answer)?;
    let pki = app.pki.clone();
    let identity = blocking(move || {
        pki.store(&enrolled.ca, None, &enrolled.certificate, &key)?;
        Ok(pki.identity()?)
    })
    .await?;
    if identity.ca_fingerprint() != token.fingerprint {
        return Err(ApiError::internal(
            "the CA sent is not the one the token names",
        ));
    }
    app.adopt(enrolled.record).await?;
    serve_with(&app, identity).await?;
    tracing::info!(
        "node {} joined cluster {:?}",
        app.node,
        app.record().cluster
    );
    Ok(status(State(app)).await)
}

/// The certificate names this node, or nothing works later (the others
/// know a node by its certificate's name).
fn own_certificate(app: &App, identity: &Identity) -> Result<(), ApiError> {
    if identity.node != app.node {
        return Err(ApiError::conflict(format!(
            "{}: the certificate names node {:?}, this node is {:?}",
            app.pki.certificate().display(),
            identity.node,
            app.node
        )));
    }
    Ok(())
}

/// Joins with this node's operator-provided certificate: the member at
/// `via` checks it (same CA) and adds this node by the name it carries.
async fn join_via(
    app: &std::sync::Arc<App>,
    via: SocketAddr,
    address: SocketAddr,
) -> Result<Json<ClusterStatus>, ApiError> {
    let tls = app.tls().ok_or_else(|| {
        ApiError::field(
            "via",
            format!(
                "joining with `via` needs this node's certificates in {} (an operator's); without them, join with an enrolment token",
                app.pki.dir.display()
            ),
        )
    })?;
    own_certificate(app, &tls.identity)?;
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let body =
        Bytes::from(serde_json::to_vec(&MemberRequest { address }).map_err(ApiError::internal)?);
    let member = via.to_string();
    let answer = peers::call(
        tls.client,
        via,
        Method::POST,
        "/v1/cluster/members",
        headers,
        body,
    )
    .await
    .map_err(|reason| ApiError::unreachable(&member, reason))?;
    let record: Record = peers::decode(&member, answer)?;
    app.adopt(record).await?;
    tracing::info!(
        "node {} joined cluster {:?}",
        app.node,
        app.record().cluster
    );
    Ok(status(State(app.clone())).await)
}

/// A node with a certificate of the cluster's CA (an operator's) asks to
/// be a member.
#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster",
    description = "A node with an operator's certificate joins. Node certificate only.",
    request_body = MemberRequest,
    responses((status = 200, body = Record), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn add_member(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Json(request): Json<MemberRequest>,
) -> Result<Json<Record>, ApiError> {
    let Caller::Node(node) = caller else {
        return Err(ApiError::forbidden("only a node adds itself"));
    };
    if app.record().nodes.is_empty() {
        return Err(ApiError::conflict(format!(
            "node {} is not a member of a cluster yet: run `holdfast cluster init` on it first",
            app.node
        )));
    }
    let address = request.address;
    let added = node.clone();
    app.change(move |record| {
        record.nodes.insert(added, Member { address });
        Ok(())
    })
    .await?;
    tracing::info!("node {node} added to the cluster by its certificate");
    Ok(Json(app.record()))
}

#[utoipa::path(post, path = "/v1/cluster/enrol", tag = "cluster",
    description = "The CA's node signs a joining node's request; the token's secret authenticates it. Public.",
    request_body = Enrol,
    responses((status = 200, body = Enrolled), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn enrol(
    State(app): Shared,
    Extension(connection): Extension<Connection>,
    Json(enrol): Json<Enrol>,
) -> Result<Json<Enrolled>, ApiError> {
    let refuse = |why: String| {
        tracing::warn!(
            "refused enrolment of {:?} from {}: {why}",
            enrol.node,
            connection.source()
        );
        ApiError::forbidden(why)
    };
    let Some(authority) = app.pki.authority()? else {
        return Err(refuse(format!(
            "this node does not hold the cluster's CA (it is on {})",
            app.record().ca_node
        )));
    };
    super::users::check_name_of("node", &enrol.node)?;
    let hash = EnrolmentToken::secret_hash(&enrol.secret);
    let path = pending_path(&app);
    let known = blocking(move || {
        with_pending(&path, |p| {
            let before = p.tokens.len();
            p.tokens.retain(|t| !secrets::same(&t.secret_hash, &hash));
            before != p.tokens.len()
        })
    })
    .await?;
    if !known {
        return Err(refuse(
            "secret: unknown, used or expired enrolment token".into(),
        ));
    }
    let certificate = authority.sign(
        &SigningRequest(enrol.request.clone()),
        &enrol.node,
        &[enrol.address.ip()],
    )?;
    let (node, address) = (enrol.node.clone(), enrol.address);
    app.change(move |record| {
        record.nodes.insert(node, Member { address });
        Ok(())
    })
    .await?;
    tracing::info!("node {} enrolled from {}", enrol.node, connection.source());
    Ok(Json(Enrolled {
        certificate,
        ca: authority.certificate_pem().to_string(),
        record: app.record(),
    }))
}

#[utoipa::path(post, path = "/v1/cluster/rotate", tag = "cluster",
    description = "A new certificate for this node (an operator's: the files reloaded). Role: admin.",
    responses((status = 200, body = ClusterStatus), (status = 502, description = "another node did not answer", body = holdfast_daemon::api::ErrorBody), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn rotate(State(app): Shared) -> Result<Json<ClusterStatus>, ApiError> {
    let tls = app.member_tls()?;
    if app.record().ca_node.is_empty() {
        // The operator's certificates: the operator replaced the files,
        // this node takes them (checked) for the next connections.
        let pki = app.pki.clone();
        let identity = blocking(move || Ok(pki.identity()?)).await?;
        own_certificate(&app, &identity)?;
        if identity.ca_fingerprint() != tls.identity.ca_fingerprint() {
            return Err(ApiError::conflict(format!(
                "{}: another CA than the cluster's; the nodes would refuse each other",
                app.pki.ca().display()
            )));
        }
        app.set_tls(Tls::new(identity)?);
        tracing::info!("node {}: the operator's certificate reloaded", app.node);
        return Ok(status(State(app)).await);
    }
    let node = app.node.clone();
    let (signing, key) = blocking(move || Ok(SigningRequest::generate(&node)?)).await?;
    let certificate = match app.pki.authority()? {
        Some(authority) => sign_for_member(&app, &authority, &app.node, &signing)?,
        None => {
            let ca_node = app.record().ca_node;
            let answer: CertificateAnswer = peers::node_call(
                &app,
                &ca_node,
                Method::POST,
                "/v1/cluster/certificate",
                Some(&CertificateRequest { request: signing.0 }),
            )
            .await?;
            answer.certificate
        }
    };
    let pki = app.pki.clone();
    let ca = tls.identity.ca_pem.clone();
    let identity = blocking(move || {
        pki.store(&ca, None, &certificate, &key)?;
        Ok(pki.identity()?)
    })
    .await?;
    app.set_tls(Tls::new(identity)?);
    tracing::info!("node {}: certificate renewed", app.node);
    Ok(status(State(app)).await)
}

fn sign_for_member(
    app: &App,
    authority: &holdfast_pki::Authority,
    node: &str,
    request: &SigningRequest,
) -> Result<String, ApiError> {
    let address = app
        .record()
        .nodes
        .get(node)
        .map(|m| m.address)
        .ok_or_else(|| {
            ApiError::forbidden(format!("node {node} is not a member of the cluster"))
        })?;
    Ok(authority.sign(request, node, &[address.ip()])?)
}

#[utoipa::path(post, path = "/v1/cluster/certificate", tag = "cluster",
    description = "The CA's node signs a member's new request. Node certificate only.",
    request_body = CertificateRequest,
    responses((status = 200, body = CertificateAnswer), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn certificate(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Json(request): Json<CertificateRequest>,
) -> Result<Json<CertificateAnswer>, ApiError> {
    let Caller::Node(node) = caller else {
        return Err(ApiError::forbidden(
            "only a node renews its own certificate",
        ));
    };
    let authority = app.pki.authority()?.ok_or_else(|| {
        ApiError::conflict(format!(
            "this node does not hold the cluster's CA (it is on {})",
            app.record().ca_node
        ))
    })?;
    let certificate = sign_for_member(&app, &authority, &node, &SigningRequest(request.request))?;
    Ok(Json(CertificateAnswer { certificate }))
}

#[utoipa::path(get, path = "/v1/cluster/record", tag = "cluster",
    description = "The cluster's record. Node certificate only.",
    responses((status = 200, body = Record), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn record(State(app): Shared) -> Json<Record> {
    Json(app.record())
}

#[utoipa::path(put, path = "/v1/cluster/record", tag = "cluster",
    description = "A newer record from another node. Node certificate only.",
    request_body = Record,
    responses((status = 204, description = "taken, or older than this node's"), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn take_record(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Json(record): Json<Record>,
) -> Result<StatusCode, ApiError> {
    let version = record.version;
    if app.adopt(record).await? {
        tracing::info!("cluster record version {version} from {}", caller.who());
    }
    Ok(StatusCode::NO_CONTENT)
}
