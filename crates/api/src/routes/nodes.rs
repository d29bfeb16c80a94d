//! Any node answers for the others: `/v1/nodes/{node}/…` is relayed to
//! that node over mutual TLS, carrying who the caller is (the target checks
//! the route's role itself), and `/v1/cluster/state` gathers every node's
//! modules at once. A node that does not answer is shown unreachable, with
//! why — never as its last known state, which this node does not keep.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use holdfast_daemon::registry::ModuleSummary;
use serde::{Deserialize, Serialize};

use crate::access::guard::{RELAYED_ROLE, RELAYED_SOURCE, RELAYED_WHO};
use crate::access::{Caller, Connection};
use crate::{peers, ApiError, Shared};

/// The largest body relayed: a module's package.
const RELAYED_BODY_LIMIT: usize = holdfast_daemon::api::MAX_INSTALL_BYTES;

#[utoipa::path(method(get, post, put, delete), path = "/v1/nodes/{node}/{path}", tag = "nodes",
    description = "Runs path on node, relayed over mutual TLS; the node checks the route's role. Role: monitor, then the path's own.",
    params(("node" = String, Path), ("path" = String, Path, description = "the path on that node, without its leading /")),
    responses((status = 200, description = "the node's answer"), (status = 502, description = "another node did not answer", body = holdfast_daemon::api::ErrorBody), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn relay(
    State(app): Shared,
    Path((node, path)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let (caller, connection) = match (
        parts.extensions.get::<Caller>(),
        parts.extensions.get::<Connection>(),
    ) {
        (Some(caller), Some(connection)) => (caller.clone(), connection.clone()),
        _ => return Err(ApiError::internal("the relay runs behind the guard")),
    };
    let body = axum::body::to_bytes(body, RELAYED_BODY_LIMIT)
        .await
        .map_err(|e| ApiError::field("body", e))?;
    let (method, uri, headers) = (parts.method, parts.uri, parts.headers);
    if path.starts_with("v1/nodes/") {
        return Err(ApiError::field(
            "path",
            "a relayed call is not relayed again",
        ));
    }
    let tls = app.member_tls()?;
    let address = app
        .record()
        .nodes
        .get(&node)
        .map(|m| m.address)
        .ok_or_else(|| ApiError::not_found(format!("node: no node {node} in the cluster")))?;
    let role = caller.role().ok_or_else(|| {
        ApiError::forbidden(format!(
            "{} acts for no user: nothing to relay",
            caller.who()
        ))
    })?;
    let mut forwarded = HeaderMap::new();
    if let Some(kind) = headers.get("content-type") {
        forwarded.insert("content-type", kind.clone());
    }
    let text = |s: String| HeaderValue::from_str(&s).map_err(ApiError::internal);
    forwarded.insert(RELAYED_WHO, text(caller.who())?);
    forwarded.insert(RELAYED_ROLE, HeaderValue::from_static(role.as_str()));
    forwarded.insert(RELAYED_SOURCE, text(connection.source())?);
    // The path as it came, still percent-encoded (the extracted one is
    // decoded, and may not form a URI again).
    let raw = uri
        .path()
        .strip_prefix("/v1/nodes/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(path.as_str(), |(_, rest)| rest);
    let target = match uri.query() {
        Some(query) => format!("/{raw}?{query}"),
        None => format!("/{raw}"),
    };
    let answer = peers::call(tls.client, address, method, &target, forwarded, body)
        .await
        .map_err(|reason| ApiError::unreachable(&node, reason))?;
    let mut response = (answer.status, answer.body).into_response();
    if let Some(kind) = answer.headers.get("content-type") {
        response.headers_mut().insert("content-type", kind.clone());
    }
    Ok(response)
}

/// One node's part of the cluster-wide view.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeModules {
    pub node: String,
    pub reachable: bool,
    /// Why the node is not shown (it did not answer, or refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub modules: Vec<ModuleSummary>,
}

#[derive(Debug, Deserialize)]
pub struct StateQuery {
    /// Comma-separated node names (default: every member).
    pub nodes: Option<String>,
}

#[utoipa::path(get, path = "/v1/cluster/state", tag = "nodes",
    description = "Every module on every node; a node that does not answer is unreachable, with why. Role: monitor.",
    params(("nodes" = Option<String>, Query, description = "node names, comma-separated (default: every member)")),
    responses((status = 200, body = Vec<NodeModules>), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn cluster_state(
    State(app): Shared,
    Query(query): Query<StateQuery>,
) -> Result<Json<Vec<NodeModules>>, ApiError> {
    let record = app.record();
    let mut names: Vec<String> = record.nodes.keys().cloned().collect();
    if names.is_empty() {
        names.push(app.node.clone());
    }
    if let Some(asked) = &query.nodes {
        let asked: Vec<String> = asked.split(',').map(|s| s.trim().to_string()).collect();
        if let Some(unknown) = asked.iter().find(|n| !names.contains(n)) {
            return Err(ApiError::field(
                "nodes",
                format!("no node {unknown} in the cluster ({})", names.join(", ")),
            ));
        }
        names = asked;
    }
    let views = names.into_iter().map(|node| {
        let app = app.clone();
        async move {
            if node == app.node {
                return NodeModules {
                    modules: app.registry.list().await,
                    node,
                    reachable: true,
                    reason: None,
                };
            }
            let answer: Result<Vec<ModuleSummary>, _> =
                peers::node_call(&app, &node, Method::GET, "/v1/modules", None::<&()>).await;
            match answer {
                Ok(modules) => NodeModules {
                    node,
                    reachable: true,
                    reason: None,
                    modules,
                },
                Err(e) => NodeModules {
                    node,
                    reachable: false,
                    reason: Some(e.message),
                    modules: Vec::new(),
                },
            }
        }
    });
    Ok(Json(join_all(views).await))
}
