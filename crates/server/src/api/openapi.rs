//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole `/v1` API,
//! generated from the handlers' `#[utoipa::path]` annotations.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, contacts, events, keys, metrics_credential, schema, segment, subscribers};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keyflow API",
        description = "Customer API with a first-class API-key platform. Authenticate with \
                       `Authorization: Bearer <key>`; errors are `{\"error\": {code, message, request_id, details}}`; \
                       every authenticated response carries X-RateLimit-* and RateLimit headers."
    ),
    paths(
        keys::create_key,
        keys::list_keys,
        keys::get_self,
        keys::get_key,
        keys::update_key,
        keys::revoke_key,
        keys::roll_key,
        metrics_credential::create_or_rotate,
        metrics_credential::get_credential,
        metrics_credential::update_credential,
        audit::list_audit,
        contacts::upsert_contact,
        contacts::list_contacts,
        contacts::get_contact,
        contacts::patch_contact,
        contacts::delete_contact,
        contacts::batch_contacts,
        events::track,
        events::track_batch,
        events::list_events,
        subscribers::list_subscribers,
        subscribers::signup,
        subscribers::unsubscribe,
        segment::track,
        segment::identify,
        segment::batch,
    ),
    components(schemas(schema::ErrorBody)),
    modifiers(&KeySecurity),
    tags(
        (name = "keys", description = "Management API (secret keys with keys:*)"),
        (name = "metrics", description = "Metrics API: the project's metrics credential"),
        (name = "audit", description = "Activity log"),
        (name = "contacts", description = "Contacts"),
        (name = "events", description = "Events"),
        (name = "subscribers", description = "Subscribers"),
        (name = "segment", description = "Segment HTTP Tracking API compatibility (HTTP Basic, key as user name)"),
    )
)]
pub struct ApiDoc;

struct KeySecurity;

impl Modify for KeySecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("sk_live_… / ck_live_… / ro_live_…".into());
        components.add_security_scheme("api_key", SecurityScheme::Http(bearer));
        components.add_security_scheme(
            "segment_basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        );
    }
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
