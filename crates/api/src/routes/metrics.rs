//! `GET /metrics`: this node's metrics in Prometheus's text format,
//! encoded by `prometheus-client` (names after ha_cluster_exporter and
//! keepalived-exporter: one series per module state, value 1 for the
//! current one). Gauges are read at each scrape; the transition and
//! failover counters follow this node's events. Prometheus scrapes every
//! node; the names are listed in `docs/operations.md`.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use holdfast_membership::State as ModuleState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::counters::Labels;
use crate::{ApiError, Shared};

const STATES: [ModuleState; 6] = [
    ModuleState::Stop,
    ModuleState::Wait,
    ModuleState::Alone,
    ModuleState::Prim,
    ModuleState::Second,
    ModuleState::Up,
];

#[utoipa::path(get, path = "/metrics", tag = "metrics",
    description = "This node's metrics in Prometheus's text format (docs/operations.md names them). Role: monitor.",
    responses((status = 200, description = "the metrics", content_type = "application/openmetrics-text", body = String), (status = "4XX", body = holdfast_daemon::api::ErrorBody)))]
pub async fn metrics(axum::extract::State(app): Shared) -> Result<Response, ApiError> {
    let mut registry = Registry::default();
    let state: Family<Labels, Gauge> = Family::default();
    let transient: Family<Labels, Gauge> = Family::default();
    let network_up: Family<Labels, Gauge> = Family::default();
    let vip_holder: Family<Labels, Gauge> = Family::default();
    for summary in app.registry.list().await {
        let module = || ("module", summary.module.clone());
        let node = || ("node", app.node.clone());
        for s in STATES {
            state
                .get_or_create(&vec![module(), node(), ("state", s.to_string())])
                .set(i64::from(summary.view.state == s));
        }
        transient
            .get_or_create(&vec![module(), node()])
            .set(i64::from(summary.view.transient));
        for (network, up) in summary.view.networks_up.iter().enumerate() {
            network_up
                .get_or_create(&vec![module(), node(), ("network", network.to_string())])
                .set(i64::from(*up));
        }
        let holds = summary.view.app_active
            && matches!(summary.view.state, ModuleState::Alone | ModuleState::Prim);
        vip_holder
            .get_or_create(&vec![module(), node()])
            .set(i64::from(holds));
    }
    registry.register(
        "holdfast_module_state",
        "The module's state on this node: one series per state, 1 for the current one",
        state,
    );
    registry.register(
        "holdfast_module_transient",
        "1 while the module's scripts run (a change under way)",
        transient,
    );
    registry.register(
        "holdfast_heartbeat_network_up",
        "1 if a heartbeat arrived on the network within the timeout",
        network_up,
    );
    registry.register(
        "holdfast_module_primary",
        "1 if this node runs the module's application as primary (it holds the virtual IP)",
        vip_holder,
    );
    registry.register(
        "holdfast_module_transitions",
        "Settled state changes of the module on this node",
        app.counters.transitions.clone(),
    );
    registry.register(
        "holdfast_module_failovers",
        "Takeovers of the application by this node, by what started them",
        app.counters.failovers.clone(),
    );
    if let Some(tls) = app.tls() {
        let facts = holdfast_pki::certificate_facts(&tls.identity.certificate_pem)
            .map_err(ApiError::internal)?;
        let expiry: Gauge = Gauge::default();
        expiry.set(facts.not_after);
        registry.register(
            "holdfast_certificate_expiry_timestamp_seconds",
            "When this node's certificate expires (Unix time)",
            expiry,
        );
    }
    let mut text = String::new();
    encode(&mut text, &registry).map_err(ApiError::internal)?;
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
