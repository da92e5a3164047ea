//! The error codes of SPEC §2, each with its HTTP status. The server maps these
//! to the `{"error": {...}}` body in exactly one place.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MissingApiKey,
    InvalidApiKey,
    KeyRevoked,
    KeyExpired,
    FeatureNotAllowed,
    IpNotAllowed,
    InsufficientScope,
    EventNotAllowed,
    InsecureKeyUsage,
    OriginNotAllowed,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidJson,
    InvalidRequest,
    ValidationFailed,
    RequestTimeout,
    HeadersTooLarge,
    Unauthorized,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::KeyRevoked => "key_revoked",
            Self::KeyExpired => "key_expired",
            Self::FeatureNotAllowed => "feature_not_allowed",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::InsufficientScope => "insufficient_scope",
            Self::EventNotAllowed => "event_not_allowed",
            Self::InsecureKeyUsage => "insecure_key_usage",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::ValidationFailed => "validation_failed",
            Self::RequestTimeout => "request_timeout",
            Self::HeadersTooLarge => "request_header_fields_too_large",
            Self::Unauthorized => "unauthorized",
            Self::Internal => "internal_error",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::KeyRevoked
            | Self::KeyExpired
            | Self::Unauthorized => 401,
            Self::FeatureNotAllowed
            | Self::IpNotAllowed
            | Self::InsufficientScope
            | Self::EventNotAllowed
            | Self::InsecureKeyUsage
            | Self::OriginNotAllowed => 403,
            Self::RateLimited => 429,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::HeadersTooLarge => 431,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::InvalidJson | Self::InvalidRequest => 400,
            Self::ValidationFailed => 422,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// The code a bare framework response with this status stands for
    /// (404 from the router, 413 from the body limit, ...).
    pub fn for_status(status: u16) -> Self {
        match status {
            400 => Self::InvalidRequest,
            401 => Self::Unauthorized,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            408 => Self::RequestTimeout,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            431 => Self::HeadersTooLarge,
            422 => Self::ValidationFailed,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// One entry of `details.fields` in a 422.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
