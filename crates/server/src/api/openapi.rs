//! `GET /openapi.json`: the OpenAPI 3.1 document of `/v1` and `/admin/v1`,
//! generated from the handlers' `#[utoipa::path]` annotations as the route
//! list registers them (`routes.rs`). This file holds what is not a route:
//! the document's description, tags, security schemes, and the error
//! responses every authenticated route shares.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keyflow API",
        description = "Customer API with a first-class API-key platform. Authenticate with \
                       `Authorization: Bearer <key>`; errors are `{\"error\": {code, message, request_id, details}}`; \
                       every authenticated response carries X-RateLimit-* and RateLimit headers."
    ),
    // Schemas only the shared responses below name (the route list adds the rest).
    components(schemas(ErrorBody, super::segment::Success, super::views::ContactView)),
    modifiers(&SecuritySchemes),
    // Every operation takes a key unless it says otherwise (Segment's
    // Basic, the admin token).
    security(("api_key" = [])),
    tags(
        (name = "keys", description = "Management API (secret keys with keys:*)"),
        (name = "metrics", description = "Metrics API: the project's metrics credential"),
        (name = "audit", description = "Activity log"),
        (name = "contacts", description = "Contacts"),
        (name = "events", description = "Events"),
        (name = "subscribers", description = "Subscribers"),
        (name = "workflows", description = "Workflows: triggers, steps and signed webhooks (workflows:*)"),
        (name = "segment", description = "Segment HTTP Tracking API compatibility (HTTP Basic, key as user name)"),
        (name = "admin", description = "Instance administration: the instance admin token; mounted only when one is configured"),
    )
)]
struct Base;

/// The document without paths (the route list adds those).
pub fn base() -> Document {
    Base::openapi()
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("sk_live_… / ck_live_… / ro_live_…".into());
        components.add_security_scheme("api_key", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "segment_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
        components.add_security_scheme(
            "metrics_credential",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let mut token = Http::new(HttpAuthScheme::Bearer);
        token.bearer_format = Some("mt_… (from POST /v1/metrics/token)".into());
        components.add_security_scheme("metrics_token", SecurityScheme::Http(token));
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The refusals every key-authenticated route can answer.
#[derive(IntoResponses)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub enum KeyRefusals {
    #[response(status = 401, description = "Missing, invalid, revoked or expired key")]
    Unauthorized(ErrorBody),
    #[response(
        status = 403,
        description = "Plan, IP allow-list, scope or origin refused"
    )]
    Forbidden(ErrorBody),
    #[response(status = 429, description = "Rate limited (see Retry-After)")]
    RateLimited(ErrorBody),
}

/// `422`: the body or query is invalid; `details.fields` says where.
#[derive(IntoResponses)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub enum Invalid {
    #[response(status = 422, description = "Invalid fields (details.fields)")]
    Invalid(ErrorBody),
}

/// What a route with a body answers when the body cannot be read: not
/// JSON, too large, or not declared as JSON.
#[derive(IntoResponses)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub enum BodyRefusals {
    #[response(
        status = 400,
        description = "The body is not valid JSON (invalid_json)"
    )]
    InvalidJson(ErrorBody),
    #[response(
        status = 413,
        description = "The body is larger than 1 MiB (payload_too_large)"
    )]
    TooLarge(ErrorBody),
    #[response(
        status = 415,
        description = "The body is not sent as application/json (unsupported_media_type)"
    )]
    NotJson(ErrorBody),
}

/// `404`: no such object in the caller's project.
#[derive(IntoResponses)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub enum NotFound {
    #[response(status = 404, description = "Not found")]
    NotFound(ErrorBody),
}

/// `?limit=` and `?cursor=` of a list.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub struct PageParams {
    /// 1-1000, default 100
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// next_cursor of the previous page
    cursor: Option<String>,
}

/// `201` for a new contact, `200` for one updated.
#[derive(IntoResponses)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub enum ContactWritten<'a> {
    #[response(status = 201, description = "Created")]
    Created(super::views::ContactView<'a>),
    #[response(status = 200, description = "Updated")]
    Updated(super::views::ContactView<'a>),
}

/// The `{id}` of an object in the path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub struct IdPath {
    /// Object id
    id: String,
}

/// The refusals of the admin token.
#[derive(IntoResponses)]
#[allow(dead_code)] // read only by the OpenAPI derive
pub enum AdminRefusals {
    #[response(status = 401, description = "Missing or wrong admin token")]
    Unauthorized(ErrorBody),
    #[response(
        status = 429,
        description = "Too many failed attempts (see Retry-After)"
    )]
    RateLimited(ErrorBody),
}

/// The `/openapi.json` handler: the document, serialised once.
pub fn serve(
    doc: &Document,
) -> impl Fn() -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    // Bytes: each request shares the one serialised copy, nothing is copied.
    let body = axum::body::Bytes::from(serde_json::to_vec(doc).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document does not serialise");
        b"{}".to_vec()
    }));
    move || {
        let response = ([(header::CONTENT_TYPE, "application/json")], body.clone());
        std::future::ready(response.into_response())
    }
}
