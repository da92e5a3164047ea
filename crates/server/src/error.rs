//! The one error type of the HTTP layer and its `{"error": {...}}` body.
//! Internal errors are logged with the request id and never echoed.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyflow_core::{ErrorCode, FieldError};
use keyflow_store::StoreError;

use crate::operations::OpError;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

tokio::task_local! {
    /// The current request's id, set by the request-context middleware so that
    /// every error body can carry it.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Value,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: json!({}),
            headers: Vec::new(),
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The same words as the operations' refusals (one source for each).
    pub fn not_found(what: &str) -> Self {
        OpError::not_found(what).into()
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        OpError::validation(fields).into()
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        OpError::field(field, message).into()
    }

    /// For bare framework responses (router 404/405, body-limit 413, timeout 408).
    pub fn from_status(status: StatusCode) -> Self {
        let code = ErrorCode::for_status(status.as_u16());
        let message = match code {
            ErrorCode::NotFound => "No such endpoint.".to_string(),
            ErrorCode::MethodNotAllowed => "This endpoint does not accept that method.".to_string(),
            ErrorCode::PayloadTooLarge => "The request body is larger than 1 MiB.".to_string(),
            ErrorCode::RequestTimeout => "The request took too long.".to_string(),
            ErrorCode::UnsupportedMediaType => "Send the body as application/json.".to_string(),
            _ => status.canonical_reason().unwrap_or("Error").to_string(),
        };
        Self::new(code, message)
    }

    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(request_id = %current_request_id(), error = %err, "{context}");
        Self::new(
            ErrorCode::Internal,
            "Something went wrong on our side; the request id identifies it in our logs.",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::Conflict(what) => Self::new(ErrorCode::Conflict, format!("{what}.")),
            StoreError::Invalid(field) => Self::validation(vec![field.clone()]),
            e if e.is_unavailable() => {
                tracing::warn!(request_id = %current_request_id(), error = %e, "database unavailable");
                Self::new(
                    ErrorCode::Unavailable,
                    "The database is unavailable; retry shortly.",
                )
            }
            _ => Self::internal("store error", &err),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(err: OpError) -> Self {
        match err {
            OpError::Refused {
                code,
                message,
                details,
            } => Self::new(code, message).with_details(details),
            OpError::Store(e) => e.into(),
            OpError::Internal { context, cause } => Self::internal(context, &cause),
        }
    }
}

/// `{"error": {...}}`, the body of every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorObject,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorObject {
    /// e.g. `insufficient_scope`, `validation_failed`.
    code: &'static str,
    message: String,
    request_id: String,
    /// For `validation_failed`: `{"fields": [{"field", "message"}]}`.
    details: Value,
}

impl ApiError {
    /// The body this error is answered with.
    pub fn body(self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code.as_str(),
                message: self.message,
                request_id: current_request_id(),
                details: self.details,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = std::mem::take(&mut self.headers);
        let mut response = (status, axum::Json(self.body())).into_response();
        let response_headers = response.headers_mut();
        for (name, value) in headers {
            response_headers.insert(name, value);
        }
        response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Every 503 says when to come back (SPEC §11: the database or a
        // capacity cap is briefly unavailable), unless it already did.
        if status == StatusCode::SERVICE_UNAVAILABLE
            && !response_headers.contains_key(header::RETRY_AFTER)
        {
            response_headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response.extensions_mut().insert(RenderedError);
        response
    }
}

/// Marks a response whose body is already our error shape.
#[derive(Clone, Copy)]
pub struct RenderedError;
