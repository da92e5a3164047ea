//! Keyflow's one integration-test binary. Every module drives the real server
//! over real sockets; `backend_tests!` runs each case on SQLite and PostgreSQL.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod admin_api;
mod auth_pipeline;
mod browser;
mod change_bus;
mod cli;
mod cli_revoke;
mod connections;
mod contacts_api;
mod contacts_csv;
mod contract;
mod dashboard;
mod dashboard_workflows;
mod events_api;
mod faults;
mod keys_api;
mod metrics_api;
mod openapi;
mod operation;
mod rate_limits;
mod segment_compat;
mod several_instances;
mod signin;
mod store_conformance;
mod subscribers_api;
mod tenant_sql;
mod webdriver;
mod workflow_runs;
mod workflows;
