//! The error of an operation, in the contract's words (SPEC error codes and
//! `details`), with nothing of HTTP: the API renders it as its error body,
//! the dashboard as a message next to the form, the CLI as a line on stderr.

use keyflow_core::{ErrorCode, FieldError};
use keyflow_store::StoreError;
use serde_json::{Value, json};

#[derive(Debug)]
pub enum OpError {
    /// A rule of the contract refused the operation; nothing changed.
    Refused {
        code: ErrorCode,
        message: String,
        details: Value,
    },
    /// The store failed or refused (a conflict, a database that is down).
    Store(StoreError),
    /// Something that should not fail did (randomness, a hashing task);
    /// `cause` is logged, never shown.
    Internal {
        context: &'static str,
        cause: String,
    },
}

pub type OpResult<T> = Result<T, OpError>;

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
            details: json!({}),
        }
    }

    /// Adds `details` to a refusal (other errors have none of their own).
    pub fn with_details(self, new_details: Value) -> Self {
        match self {
            Self::Refused { code, message, .. } => Self::Refused {
                code,
                message,
                details: new_details,
            },
            other => other,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        let summary = fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("; ");
        Self::new(
            ErrorCode::ValidationFailed,
            format!("The request is invalid: {summary}"),
        )
        .with_details(json!({ "fields": fields }))
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    pub fn internal(context: &'static str, cause: &dyn std::fmt::Display) -> Self {
        Self::Internal {
            context,
            cause: cause.to_string(),
        }
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}
