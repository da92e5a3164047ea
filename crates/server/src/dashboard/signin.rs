//! Dashboard sign-in (SPEC §6). Attempts are limited per client IP, per
//! (account, IP) and per account, charged *before* the password is checked
//! (and, for the account buckets, given back when it was right), so
//! concurrent guesses cannot all slip through. The order: the address's own
//! buckets, then one of a few hashing turns (none free: `503`, the charge
//! given back, nothing looked up or hashed), then the account lookup and the
//! account-wide bucket, then the hash. Memory stays bounded.
//!
//! Lockout cannot be turned into a weapon: the strict limit is per
//! (account, IP), and the account-wide limit does not apply to a browser that
//! already signed in to that account. That browser carries a device cookie,
//! an HMAC keyed by the account's password hash: it holds on every instance
//! and across restarts, and dies with a password change.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use keyflow_core::RateLimit;
use keyflow_core::keys::{hex32, parse_hex32};
use keyflow_store::Operator;
use sha2::Sha256;

use super::page::PageError;
use super::{session, signin_page, start_session};
use crate::limits::LocalRateLimiter;
use crate::operations::tenancy;
use crate::state::SharedState;

/// Sign-in attempts per client IP (IPv6: per /64), across accounts. A right
/// password is not given back here, so one address cannot keep the hashing
/// permits busy by signing in to its own account in a loop.
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
const DEVICE_LIFETIME_MS: i64 = 90 * 24 * 3600 * 1000;

/// The sign-in limiters (in memory, pruned as their windows pass).
#[derive(Default)]
pub struct SigninThrottle {
    pub limiter: LocalRateLimiter,
}

/// The buckets one attempt is charged to.
struct Charges {
    buckets: Vec<(String, RateLimit)>,
}

impl SigninThrottle {
    /// Charges one attempt to every bucket, all or none: when one is
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

    /// Gives back every bucket of an attempt that was not checked.
    fn refund_all(&self, charges: &Charges, now: i64) {
        for (bucket, quota) in &charges.buckets {
            self.limiter.refund(bucket, *quota, now);
        }
    }

    /// Gives back the account buckets (not the per-IP one) after a right password.
    fn refund_accounts(&self, charges: &Charges, now: i64) {
        for (bucket, quota) in &charges.buckets {
            if !bucket.starts_with("ip:") {
                self.limiter.refund(bucket, *quota, now);
            }
        }
    }

    pub fn prune(&self, now: i64) {
        self.limiter.prune(now);
    }
}

/// HMAC-SHA256 over the operator id and issue time, keyed by the stored
/// password hash (secret, salted, changes with the password).
fn device_mac(operator: &Operator, issued_ms: i64) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(operator.password_hash.as_bytes()).ok()?;
    mac.update(b"keyflow-device|");
    mac.update(operator.id.as_bytes());
    mac.update(b"|");
    mac.update(issued_ms.to_string().as_bytes());
    Some(mac)
}

fn device_token(operator: &Operator, issued_ms: i64) -> Option<String> {
    let tag: [u8; 32] = device_mac(operator, issued_ms)?
        .finalize()
        .into_bytes()
        .into();
    Some(format!("{issued_ms}.{}", hex32(&tag)))
}

/// Whether the request carries a live device cookie of `operator` (any of
/// its `kf_device` cookies: one set by a sibling site must not hide it).
fn is_known_device(headers: &HeaderMap, operator: Option<&Operator>, now: i64) -> bool {
    let Some(operator) = operator else {
        return false;
    };
    session::cookie_values(headers, DEVICE_COOKIE)
        .any(|token| device_token_valid(token, operator, now))
}

fn device_token_valid(token: &str, operator: &Operator, now: i64) -> bool {
    let Some((issued, hex)) = token.split_once('.') else {
        return false;
    };
    let Ok(issued_ms) = issued.parse::<i64>() else {
        return false;
    };
    let age_ok = now
        .checked_sub(issued_ms)
        .is_some_and(|age| (0..=DEVICE_LIFETIME_MS).contains(&age));
    if !age_ok {
        return false;
    }
    match (parse_hex32(hex), device_mac(operator, issued_ms)) {
        (Some(tag), Some(mac)) => mac.verify_slice(&tag).is_ok(),
        _ => false,
    }
}

fn device_set_cookie(operator: &Operator, now: i64, secure: bool) -> Option<HeaderValue> {
    let token = device_token(operator, now)?;
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={token}; Path=/signin; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        DEVICE_LIFETIME_MS / 1000
    ))
    .ok()
}

/// The email as stored: trimmed, NFC, lower case; `None` when it cannot be
/// an account's (too long, control characters).
fn normalised_email(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.chars().count() > MAX_EMAIL_CHARS || trimmed.chars().any(char::is_control) {
        return None;
    }
    Some(keyflow_core::text::nfc_email(trimmed).to_lowercase())
}

fn busy(email: &str, next: &str) -> Response {
    let mut response = signin_page(
        StatusCode::SERVICE_UNAVAILABLE,
        email,
        next,
        Some("Too many sign-ins at once. Try again in a moment."),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

pub async fn signin(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !session::same_origin(&headers) {
        return PageError::CrossSite.into_response();
    }
    let raw_email = form.get("email").map(String::as_str).unwrap_or_default();
    let next = form.get("next").map(String::as_str).unwrap_or_default();
    let Some(email) = normalised_email(raw_email) else {
        return signin_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
            next,
            Some("That is not an email address (at most 254 characters, no control characters)."),
        );
    };
    let password = form.get("password").cloned().unwrap_or_default();
    let ip = crate::auth::client_ip(&state, Some(peer), &headers);
    let subject = ip.map_or_else(|| "unknown".to_string(), keyflow_core::ip::limiter_subject);
    let now = state.now_ms();
    let throttle = &state.signin;
    let too_many = || {
        signin_page(
            StatusCode::TOO_MANY_REQUESTS,
            &email,
            next,
            Some("Too many failed sign-ins. Wait a few minutes and try again."),
        )
    };
    // The address's own buckets first: an address over its limit never
    // touches a hashing turn or the database.
    let mut charges = Charges {
        buckets: vec![
            (format!("ip:{subject}"), PER_IP),
            (format!("account-ip:{email}|{subject}"), PER_ACCOUNT_AND_IP),
        ],
    };
    if !throttle.charge(&charges, now) {
        return too_many();
    }
    // Then a hashing turn: without one the attempt is given back, unchecked.
    let Some(permit) = tenancy::try_hashing_permit() else {
        throttle.refund_all(&charges, now);
        return busy(&email, next);
    };
    let operator = match state.store.find_operator_by_email(&email).await {
        Ok(op) => op,
        Err(e) => {
            throttle.refund_all(&charges, now);
            return PageError::from(e).into_response();
        }
    };
    // The account-wide bucket, unless this browser signed in to it before.
    if !is_known_device(&headers, operator.as_ref(), now) {
        let account = Charges {
            buckets: vec![(format!("account:{email}"), PER_ACCOUNT)],
        };
        if !throttle.charge(&account, now) {
            throttle.refund_all(&charges, now);
            return too_many();
        }
        charges.buckets.extend(account.buckets);
    }
    let hash = operator.as_ref().map(|o| o.password_hash.clone());
    let verified = tenancy::verify_password(permit, password, hash).await;
    match operator {
        Some(op) if verified => {
            throttle.refund_accounts(&charges, now);
            let ip = ip.map(|i| i.to_string());
            let mut response = match start_session(&state, &headers, &op, ip, Some(next)).await {
                Ok(r) => r,
                Err(e) => return PageError::from(e).into_response(),
            };
            if let Some(cookie) = device_set_cookie(&op, now, session::is_https(&headers)) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response
        }
        _ => signin_page(StatusCode::UNAUTHORIZED, &email, next, Some(MISMATCH)),
    }
}

const MISMATCH: &str = "That email and password do not match.";
