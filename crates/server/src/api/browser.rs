//! Browser tracking (SPEC §5): `/embed.js` and CORS preflights. The key
//! checks for browsers (insecure_key_usage, allowed_origins) live in the auth
//! pipeline, where the key is known.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Our own small script; no third-party code.
pub const EMBED_JS: &str = include_str!("../../assets/embed.js");

pub async fn embed_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        EMBED_JS,
    )
        .into_response()
}

/// Answers CORS preflights for `/v1`. A preflight carries no key, so it is
/// answered for any origin; the real request is then checked against the key
/// (client keys only, honouring `allowed_origins`).
pub async fn cors_preflight(req: Request, next: Next) -> Response {
    let is_preflight = req.method() == axum::http::Method::OPTIONS
        && req.uri().path().starts_with("/v1/")
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let origin = req.headers().get(header::ORIGIN).cloned();
    match (is_preflight, origin) {
        (true, Some(origin)) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PATCH, DELETE"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            response
        }
        _ => next.run(req).await,
    }
}
