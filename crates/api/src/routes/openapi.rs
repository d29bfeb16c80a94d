//! The API's OpenAPI document, generated from the handlers' annotations
//! and the types' derives (utoipa), served at `/v1/openapi.json`. Every
//! route of `routes/mod.rs` is listed here; the role each needs is in its
//! description (the guard enforces it).

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use super::{cluster, console, events, metrics, nodes, session, users};
use crate::Shared;
use holdfast_daemon::api as modules;

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Holdfast", description = "The node's API: any node answers for the cluster. Errors answer {\"error\": \"...\"}, naming the field at fault."),
    paths(
        modules::node, modules::list, modules::install, modules::module, modules::uninstall,
        modules::export, modules::command, modules::settings, modules::log, modules::print,
        session::login, session::whoami, session::logout,
        users::list, users::add, users::change, users::remove,
        users::tokens, users::create_token, users::revoke_token, users::audit,
        cluster::status, cluster::init, cluster::enrolment_token, cluster::join, cluster::enrol,
        cluster::add_member, cluster::rotate, cluster::certificate, cluster::record, cluster::take_record,
        nodes::cluster_state, nodes::relay, events::stream, events::recent, metrics::metrics, document, console::page, console::file,
    ),
    modifiers(&Security),
    security(("token" = []), ("session" = []))
)]
pub struct ApiDoc;

/// API tokens (`Authorization: Bearer`) and the session cookie.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::access::sessions::COOKIE,
            ))),
        );
    }
}

/// The document, with the base path as its server when there is one.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "api",
    description = "This document. Public.",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
pub async fn document(axum::extract::State(app): Shared) -> Json<utoipa::openapi::OpenApi> {
    let mut document = ApiDoc::openapi();
    if !app.settings.base_path.is_empty() {
        document.servers = Some(vec![utoipa::openapi::Server::new(&app.settings.base_path)]);
    }
    Json(document)
}
