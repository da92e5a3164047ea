//! Prometheus text for `GET /metrics`: a handful of counters kept in atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use keyflow_core::ErrorCode;

#[derive(Default)]
pub struct Prometheus {
    pub responses_2xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub key_cache_hits: AtomicU64,
    pub key_store_lookups: AtomicU64,
    pub rate_limited: AtomicU64,
    pub auth_rejections: [AtomicU64; AUTH_CODES.len()],
    pub usage_flush_failures: AtomicU64,
}

/// The auth outcomes counted separately.
pub const AUTH_CODES: [ErrorCode; 11] = [
    ErrorCode::MissingApiKey,
    ErrorCode::InvalidApiKey,
    ErrorCode::KeyRevoked,
    ErrorCode::KeyExpired,
    ErrorCode::FeatureNotAllowed,
    ErrorCode::IpNotAllowed,
    ErrorCode::InsufficientScope,
    ErrorCode::EventNotAllowed,
    ErrorCode::InsecureKeyUsage,
    ErrorCode::OriginNotAllowed,
    ErrorCode::RateLimited,
];

impl Prometheus {
    pub fn count_status(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.responses_2xx,
            400..=499 => &self.responses_4xx,
            500..=599 => &self.responses_5xx,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_auth_rejection(&self, code: ErrorCode) {
        if let Some(i) = AUTH_CODES.iter().position(|c| *c == code) {
            self.auth_rejections[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE keyflow_http_responses_total counter");
        for (class, c) in [
            ("2xx", &self.responses_2xx),
            ("4xx", &self.responses_4xx),
            ("5xx", &self.responses_5xx),
        ] {
            let _ = writeln!(
                out,
                "keyflow_http_responses_total{{class=\"{class}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(out, "# TYPE keyflow_auth_rejections_total counter");
        for (code, c) in AUTH_CODES.iter().zip(&self.auth_rejections) {
            let _ = writeln!(
                out,
                "keyflow_auth_rejections_total{{code=\"{}\"}} {}",
                code.as_str(),
                get(c)
            );
        }
        let simple = [
            ("keyflow_key_cache_hits_total", &self.key_cache_hits),
            ("keyflow_key_store_lookups_total", &self.key_store_lookups),
            ("keyflow_rate_limited_total", &self.rate_limited),
            (
                "keyflow_usage_flush_failures_total",
                &self.usage_flush_failures,
            ),
        ];
        for (name, c) in simple {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", get(c));
        }
        out
    }
}
