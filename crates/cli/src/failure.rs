//! How a command fails: a message on stderr, or the error object with `--json`.

use keyflow_server::error::ApiError;
use serde_json::json;

/// A command failure: a message, and the API error behind it when there is one.
pub struct Failure {
    message: String,
    api: Option<ApiError>,
}

impl Failure {
    pub fn print(&self, json_output: bool) {
        match (&self.api, json_output) {
            (Some(api), true) => {
                println!(
                    "{}",
                    json!({"error": {"code": api.code.as_str(), "message": api.message, "details": api.details}})
                );
            }
            (_, true) => println!(
                "{}",
                json!({"error": {"code": "command_failed", "message": self.message}})
            ),
            (_, false) => eprintln!("keyflow: {}", self.message),
        }
    }
}

impl From<ApiError> for Failure {
    fn from(api: ApiError) -> Self {
        Self {
            message: api.message.clone(),
            api: Some(api),
        }
    }
}

impl From<keyflow_server::operations::OpError> for Failure {
    fn from(e: keyflow_server::operations::OpError) -> Self {
        ApiError::from(e).into()
    }
}

macro_rules! impl_failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Self { message: e.to_string(), api: None }
            }
        }
    )*};
}
impl_failure_from!(
    keyflow_server::config::ConfigError,
    keyflow_store::StoreError,
    std::io::Error,
    serde_json::Error,
    String
);
