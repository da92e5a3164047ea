//! Dashboard sign-in (SPEC §6): failures are limited per client IP, per
//! (account, IP) and per account, charged *before* the password is checked
//! (and given back when it was right), so concurrent guesses cannot all slip
//! through. Password hashing runs under a small permit count: a flood is
//! answered `503` without hashing, and memory stays bounded.
//!
//! Lockout cannot be turned into a weapon: the strict limit is per
//! (account, IP), and the lenient account-wide limit does not apply to a
//! browser that already signed in to that account (it carries a device
//! cookie), so an attacker elsewhere cannot lock the operator out.

use std::collections::HashMap;
use std::time::Duration;

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use keyflow_core::RateLimit;
use keyflow_core::keys::{KeyDigest, random_base62};
use moka::sync::Cache;

use super::{error_page, refused_cross_site, session, signin_page, start_session};
use crate::limits::LocalRateLimiter;
use crate::operations::tenancy::{self, Verification};
use crate::state::SharedState;

/// Failed sign-ins per client IP (IPv6: per /64), across accounts.
pub const PER_IP: RateLimit = RateLimit {
    limit: 30,
    period_seconds: 60,
};
/// Failed sign-ins per (account, client IP): the strict limit.
pub const PER_ACCOUNT_AND_IP: RateLimit = RateLimit {
    limit: 10,
    period_seconds: 900,
};
/// Failed sign-ins per account from all IPs together, except from browsers
/// that signed in to it before: slows a distributed guesser down without
/// letting it lock the real operator out.
pub const PER_ACCOUNT: RateLimit = RateLimit {
    limit: 100,
    period_seconds: 3600,
};
/// The longest email address (RFC 5321's path limit); longer input is
/// refused before any limiter sees it, so buckets stay small.
pub const MAX_EMAIL_CHARS: usize = 254;

const DEVICE_COOKIE: &str = "kf_device";
const DEVICE_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// The sign-in limiters and the devices known to have signed in.
pub struct SigninThrottle {
    pub limiter: LocalRateLimiter,
    /// Digest of a device cookie → the operator who signed in with it. In
    /// memory and bounded: after a restart a browser is known again after
    /// its next successful sign-in.
    devices: Cache<KeyDigest, String>,
}

impl Default for SigninThrottle {
    fn default() -> Self {
        Self {
            limiter: LocalRateLimiter::default(),
            devices: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(DEVICE_LIFETIME)
                .build(),
        }
    }
}

/// The buckets one attempt is charged to.
struct Charges {
    buckets: Vec<(String, RateLimit)>,
}

impl SigninThrottle {
    /// Charges one failure to every bucket, all or none: when one is
    /// exhausted, those already charged are given back and `false` returned.
    fn charge(&self, charges: &Charges, now: i64) -> bool {
        for (i, (bucket, quota)) in charges.buckets.iter().enumerate() {
            if !self.limiter.decide(bucket, *quota, now, true).allowed {
                for (bucket, quota) in &charges.buckets[..i] {
                    self.limiter.refund(bucket, *quota, now);
                }
                return false;
            }
        }
        true
    }

    fn refund(&self, charges: &Charges, now: i64) {
        for (bucket, quota) in &charges.buckets {
            self.limiter.refund(bucket, *quota, now);
        }
    }

    fn is_known_device(&self, headers: &HeaderMap, operator_id: Option<&str>) -> bool {
        let (Some(token), Some(operator_id)) = (device_cookie(headers), operator_id) else {
            return false;
        };
        self.devices
            .get(&KeyDigest::of(&token))
            .is_some_and(|known| known == operator_id)
    }

    /// A new device cookie for `operator_id`, remembered.
    fn remember_device(&self, operator_id: &str) -> Option<HeaderValue> {
        let token = random_base62(32).ok()?;
        self.devices
            .insert(KeyDigest::of(&token), operator_id.to_string());
        HeaderValue::from_str(&format!(
            "{DEVICE_COOKIE}={token}; Path=/signin; HttpOnly; SameSite=Lax; Max-Age={}",
            DEVICE_LIFETIME.as_secs()
        ))
        .ok()
    }

    pub fn prune(&self, now: i64) {
        self.limiter.prune(now);
    }
}

fn device_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == DEVICE_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The email as stored: trimmed, NFC, lower case; `None` when it cannot be
/// an account's (too long, control characters).
fn normalised_email(raw: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization;
    let trimmed = raw.trim();
    if trimmed.chars().count() > MAX_EMAIL_CHARS || trimmed.chars().any(char::is_control) {
        return None;
    }
    Some(trimmed.nfc().collect::<String>().to_lowercase())
}

pub async fn signin(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !session::same_origin(&headers) {
        return refused_cross_site();
    }
    let raw_email = form.get("email").map(String::as_str).unwrap_or_default();
    let Some(email) = normalised_email(raw_email) else {
        return signin_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            Some("That is not an email address (at most 254 characters, no control characters)."),
        );
    };
    let password = form.get("password").cloned().unwrap_or_default();
    let ip = crate::auth::client_ip(&state, Some(peer), &headers);
    let subject = ip.map_or_else(|| "unknown".to_string(), keyflow_core::ip::limiter_subject);
    let operator = match state.store.find_operator_by_email(&email).await {
        Ok(op) => op,
        Err(e) => return error_page(e.into()),
    };
    let throttle = &state.signin;
    let mut charges = Charges {
        buckets: vec![
            (format!("ip:{subject}"), PER_IP),
            (format!("account-ip:{email}|{subject}"), PER_ACCOUNT_AND_IP),
        ],
    };
    if !throttle.is_known_device(&headers, operator.as_ref().map(|o| o.id.as_str())) {
        charges
            .buckets
            .push((format!("account:{email}"), PER_ACCOUNT));
    }
    let now = state.now_ms();
    if !throttle.charge(&charges, now) {
        return signin_page(
            StatusCode::TOO_MANY_REQUESTS,
            &email,
            Some("Too many failed sign-ins. Wait a few minutes and try again."),
        );
    }
    let hash = operator.as_ref().map(|o| o.password_hash.clone());
    match tenancy::try_verify_password(password, hash).await {
        Verification::Matches => {
            throttle.refund(&charges, now);
            let Some(op) = operator else {
                return signin_page(StatusCode::UNAUTHORIZED, &email, Some(MISMATCH));
            };
            let mut response =
                match start_session(&state, &headers, &op, ip.map(|i| i.to_string())).await {
                    Ok(r) => r,
                    Err(e) => return error_page(e),
                };
            if let Some(cookie) = throttle.remember_device(&op.id) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response
        }
        Verification::DoesNotMatch => signin_page(StatusCode::UNAUTHORIZED, &email, Some(MISMATCH)),
        Verification::Busy => {
            // Nothing was checked: the attempt costs nothing.
            throttle.refund(&charges, now);
            let mut response = signin_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &email,
                Some("Too many sign-ins at once. Try again in a moment."),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

const MISMATCH: &str = "That email and password do not match.";
