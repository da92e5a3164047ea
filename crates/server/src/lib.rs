//! Keyflow's HTTP server: the `/v1` API, the instance admin API, the auth
//! pipeline and rate limiting. `keyflow serve` and the integration tests both
//! start it through [`launch_with_listener`].

pub mod admin;
pub mod api;
pub mod app;
pub mod auth;
pub mod changes;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod json;
pub mod limits;
pub mod metrics_token;
pub mod operations;
pub mod prometheus;
pub mod redact;
pub mod redis_limiter;
pub mod redis_link;
pub mod serve;
pub mod state;
pub mod usage;
pub mod workflows;

pub use app::{build_state, launch_with_listener, router};
pub use config::{Config, ConfigOverrides};
pub use state::{AppState, SharedState};
