//! The API's routes, in one table: each declares the [`Access`] it needs
//! with [`allow`], and the guard (`access/guard.rs`) enforces it, logs the
//! refusals and audits the commands. A new route is one line here: its
//! path, `allow(&app, <access>, <method>(<handler>))`, and its handler in
//! the `paths` of `routes/openapi.rs` (with a `#[utoipa::path]` saying its role).
//!
//! | method | path | access | what |
//! |---|---|---|---|
//! | GET | `/v1/openapi.json` | public | the OpenAPI document (`routes/openapi.rs`), every route below |
//! | GET | `/` | public | the web console's page (`routes/console.rs`) |
//! | GET | `/console/{file}` | public | the console's scripts and style sheet |
//! | GET | `/v1/node` | monitor | this node's name and version |
//! | GET, POST | `/v1/modules` | monitor, admin | modules on this node; install a package (zip) |
//! | GET, DELETE | `/v1/modules/{name}` | monitor, admin | one module; uninstall it (its package kept) |
//! | GET | `/v1/modules/{name}/package` | admin | the installed module as a package (scripts included) |
//! | POST | `/v1/modules/{name}/command` | control | start, stop, swap, prim, second, ... |
//! | GET, POST | `/v1/modules/{name}/log` | monitor, control | the module log; write to it |
//! | POST, GET, DELETE | `/v1/session` | public, monitor, monitor | log in; who am I; log out |
//! | GET, POST | `/v1/users` | admin | users; add one |
//! | PUT, DELETE | `/v1/users/{name}` | admin | change a user's role or password; remove |
//! | GET, POST | `/v1/tokens` | admin | API tokens; create one (shown once) |
//! | DELETE | `/v1/tokens/{id}` | admin | revoke |
//! | GET | `/v1/audit` | admin | the audit log of this node |
//! | GET | `/v1/cluster` | monitor | members, CA, this node's certificate expiry |
//! | POST | `/v1/cluster/init` | admin | create the cluster (CA, certificate, admin user) |
//! | POST | `/v1/cluster/tokens` | admin | a one-time enrolment token (on the CA's node) |
//! | POST | `/v1/cluster/join` | admin | join with a token (this node asks the CA's node), or `via` a member with an operator's certificate |
//! | POST | `/v1/cluster/enrol` | public | the CA's node signs a joining node's request (the token authenticates it) |
//! | POST | `/v1/cluster/members` | node | a node with an operator's certificate joins |
//! | POST | `/v1/cluster/rotate` | admin | a new certificate for this node (an operator's: the files reloaded) |
//! | POST | `/v1/cluster/certificate` | node | the CA's node signs a member's new request |
//! | GET, PUT | `/v1/cluster/record` | node | the cluster's record, between nodes |
//! | GET | `/v1/cluster/state` | monitor | every module on every node; unreachable nodes say why |
//! | GET, POST, PUT, DELETE | `/v1/nodes/{node}/{*path}` | monitor, then the path's own | relayed to `node` over mutual TLS |
//! | GET | `/v1/events` | monitor | the cluster's events, as server-sent events (`?since=`, `Last-Event-ID`) |
//! | GET | `/v1/events/recent` | monitor | the recent events, as JSON (`?since=`) |
//! | GET | `/metrics` | monitor | this node's metrics, Prometheus text format (`routes/metrics.rs`) |
//!
//! HTTPS serves everything under the settings' `base_path` as well as at
//! the root (where nodes call each other); the Unix socket at the root.
//! Metrics and the support bundle will be routes here too, each in its
//! own file beside these.

pub mod cluster;
pub mod console;
pub mod events;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod session;
pub mod users;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, on, post, put, MethodFilter, MethodRouter};
use axum::Router;
use holdfast_daemon::api as modules;

use crate::access::{guard, Access, Role};
use crate::App;

const PUBLIC: Access = Access::Public;
const MONITOR: Access = Access::Role(Role::Monitor);
const CONTROL: Access = Access::Role(Role::Control);
const ADMIN: Access = Access::Role(Role::Admin);
const NODE: Access = Access::Node;

/// `route`, served only to callers the guard lets through for `access`.
pub fn allow<S: Clone + Send + Sync + 'static>(
    app: &Arc<App>,
    access: Access,
    route: MethodRouter<S>,
) -> MethodRouter<S> {
    route.route_layer(from_fn_with_state((app.clone(), access), guard))
}

/// The methods the API uses, all relayed.
fn relayed() -> MethodFilter {
    MethodFilter::GET
        .or(MethodFilter::POST)
        .or(MethodFilter::PUT)
        .or(MethodFilter::DELETE)
}

pub fn router(app: Arc<App>) -> Router {
    let a = &app;
    let daemon = Router::new()
        .route("/v1/node", allow(a, MONITOR, get(modules::node)))
        .route(
            "/v1/modules",
            allow(a, MONITOR, get(modules::list)).merge(allow(
                a,
                ADMIN,
                post(modules::install).layer(DefaultBodyLimit::max(modules::MAX_INSTALL_BYTES)),
            )),
        )
        .route(
            "/v1/modules/{name}",
            allow(a, MONITOR, get(modules::module)).merge(allow(
                a,
                ADMIN,
                delete(modules::uninstall),
            )),
        )
        .route(
            "/v1/modules/{name}/package",
            allow(a, ADMIN, get(modules::export)),
        )
        .route(
            "/v1/modules/{name}/command",
            allow(a, CONTROL, post(modules::command)),
        )
        .route(
            "/v1/modules/{name}/settings",
            allow(a, CONTROL, post(modules::settings)),
        )
        .route(
            "/v1/modules/{name}/log",
            allow(a, MONITOR, get(modules::log)).merge(allow(a, CONTROL, post(modules::print))),
        )
        .with_state(app.registry.clone());
    let own = Router::new()
        .route("/", allow(a, PUBLIC, get(console::page)))
        .route("/console/{file}", allow(a, PUBLIC, get(console::file)))
        .route(
            "/v1/session",
            allow(a, PUBLIC, post(session::login))
                .merge(allow(a, MONITOR, get(session::whoami)))
                .merge(allow(a, MONITOR, delete(session::logout))),
        )
        .route(
            "/v1/users",
            allow(a, ADMIN, get(users::list)).merge(allow(a, ADMIN, post(users::add))),
        )
        .route(
            "/v1/users/{name}",
            allow(a, ADMIN, put(users::change)).merge(allow(a, ADMIN, delete(users::remove))),
        )
        .route(
            "/v1/tokens",
            allow(a, ADMIN, get(users::tokens)).merge(allow(a, ADMIN, post(users::create_token))),
        )
        .route(
            "/v1/tokens/{id}",
            allow(a, ADMIN, delete(users::revoke_token)),
        )
        .route("/v1/audit", allow(a, ADMIN, get(users::audit)))
        .route("/v1/cluster", allow(a, MONITOR, get(cluster::status)))
        .route("/v1/cluster/init", allow(a, ADMIN, post(cluster::init)))
        .route(
            "/v1/cluster/tokens",
            allow(a, ADMIN, post(cluster::enrolment_token)),
        )
        .route("/v1/cluster/join", allow(a, ADMIN, post(cluster::join)))
        .route("/v1/cluster/enrol", allow(a, PUBLIC, post(cluster::enrol)))
        .route(
            "/v1/cluster/members",
            allow(a, NODE, post(cluster::add_member)),
        )
        .route("/v1/cluster/rotate", allow(a, ADMIN, post(cluster::rotate)))
        .route(
            "/v1/cluster/certificate",
            allow(a, NODE, post(cluster::certificate)),
        )
        .route(
            "/v1/cluster/record",
            allow(a, NODE, get(cluster::record)).merge(allow(a, NODE, put(cluster::take_record))),
        )
        .route(
            "/v1/cluster/state",
            allow(a, MONITOR, get(nodes::cluster_state)),
        )
        .route("/v1/openapi.json", allow(a, PUBLIC, get(openapi::document)))
        .route("/v1/events", allow(a, MONITOR, get(events::stream)))
        .route("/v1/events/recent", allow(a, MONITOR, get(events::recent)))
        .route("/metrics", allow(a, MONITOR, get(metrics::metrics)))
        .route(
            "/v1/nodes/{node}/{*path}",
            allow(a, MONITOR, on(relayed(), nodes::relay)),
        )
        .with_state(app.clone());
    daemon
        .merge(own)
        .layer(from_fn(crate::error::one_format))
        .layer(from_fn(crate::body::read_first))
        .layer(from_fn_with_state(app.clone(), crate::access::cors::cors))
}

/// `router` as HTTPS serves it: under the settings' base path too (for a
/// reverse proxy in front), and at the root, where the other nodes call
/// it (they do not know this node's base path). The Unix socket serves it
/// as it is.
pub fn under_base_path(router: Router, base_path: &str) -> Router {
    match base_path {
        "" => router,
        base => Router::new()
            .nest(base, router.clone())
            .merge(router)
            .layer(from_fn(crate::error::one_format)),
    }
}
