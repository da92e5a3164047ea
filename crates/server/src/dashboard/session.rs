//! Dashboard sessions: a random id in an HttpOnly, SameSite=Lax cookie (Secure
//! behind TLS), server-side rows in the Store (only the id's SHA-256), idle
//! timeout 1 h, absolute 24 h, a CSRF token per session, and a same-origin
//! check on every state-changing request.

use axum::http::{HeaderMap, HeaderValue, header};
use keyflow_core::keys::KeyDigest;
use keyflow_store::{Operator, Session};

use crate::error::ApiError;
use crate::state::SharedState;

pub const COOKIE: &str = "kf_session";
pub const IDLE_TIMEOUT_MS: i64 = 3600 * 1000;
pub const ABSOLUTE_TIMEOUT_MS: i64 = 24 * 3600 * 1000;
/// `last_seen_at` is written at most this often (not on every page view).
const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// Every value of the cookie `name` the request carries (a sibling site may
/// set one of the same name too).
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, value)| value)
}

pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    cookie_values(headers, COOKIE).next().map(str::to_string)
}

/// Whether the request came over TLS (directly, or per a trusted proxy).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

pub fn set_cookie(id: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        ABSOLUTE_TIMEOUT_MS / 1000
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("kf_session=; Path=/"))
}

pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("kf_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The signed-in operator, if the cookie names a live session.
pub struct SignedIn {
    pub session: Session,
    pub operator: Operator,
}

pub async fn current(
    state: &SharedState,
    headers: &HeaderMap,
) -> Result<Option<SignedIn>, ApiError> {
    let Some(id) = cookie_value(headers) else {
        return Ok(None);
    };
    let hash = KeyDigest::of(&id).to_hex();
    let Some(session) = state.store.get_session(&hash).await? else {
        return Ok(None);
    };
    let now = state.now_ms();
    if now - session.last_seen_at > IDLE_TIMEOUT_MS
        || now - session.created_at > ABSOLUTE_TIMEOUT_MS
    {
        state.store.delete_session(&hash).await?;
        return Ok(None);
    }
    let Some(operator) = state.store.get_operator(&session.operator_id).await? else {
        return Ok(None);
    };
    if now - session.last_seen_at > TOUCH_EVERY_MS {
        state.store.touch_session(&hash, now).await?;
    }
    Ok(Some(SignedIn { session, operator }))
}

/// Ends the browser's session, if it has one.
pub async fn end(state: &SharedState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(id) = cookie_value(headers) {
        crate::operations::sessions::sign_out(state.store.as_ref(), &id).await?;
    }
    Ok(())
}

/// Refuses requests a browser marks as cross-site, or whose `Origin` is not
/// this host: a form on another site cannot post here.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site")
    {
        return false;
    }
    match (text(header::ORIGIN), text(header::HOST)) {
        (Some(origin), Some(host)) => {
            let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            authority.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => false,
        // Browsers send Origin on every POST; a request without it is not a
        // cross-site form (and authenticated forms also need the CSRF token).
        (None, _) => true,
    }
}

/// Constant-time comparison of the submitted CSRF token with the session's.
pub fn csrf_ok(session: &Session, submitted: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    submitted.is_some_and(|s| bool::from(s.as_bytes().ct_eq(session.csrf_token.as_bytes())))
}
