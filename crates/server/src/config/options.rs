//! Every option once: its TOML key, flag, environment variable, default and
//! meaning. `docs/configuration.md`'s table is generated from [`OPTIONS`]
//! (a test keeps them equal), and `keyflow config check` prints the
//! effective value of each with where it came from.

use std::fmt::Write;

use keyflow_core::RateLimit;

use super::{Config, LogFormat};
use crate::workflows::delivery::PrivateNetworks;

/// Where an effective value came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Default,
    /// The TOML file's key.
    File(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File(_) => "file",
            Source::Env(_) => "env",
            Source::Flag(_) => "flag",
        }
    }

    /// The file key, variable or flag that set the value.
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            Source::Default => None,
            Source::File(s) | Source::Env(s) | Source::Flag(s) => Some(s),
        }
    }
}

pub struct ConfigOption {
    /// The TOML key, also the name `config check` prints; `None` for options
    /// that only a flag or the environment can set.
    pub key: &'static str,
    pub in_file: bool,
    pub flag: Option<&'static str>,
    pub env: Option<&'static str>,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn option(
    key: &'static str,
    flag: Option<&'static str>,
    env: Option<&'static str>,
    default: &'static str,
    meaning: &'static str,
) -> ConfigOption {
    ConfigOption {
        key,
        in_file: true,
        flag,
        env,
        default,
        meaning,
    }
}

/// An option the file cannot set (where the file is, the admin token
/// itself, the log filter).
const fn outside_file(
    key: &'static str,
    flag: Option<&'static str>,
    env: &'static str,
    default: &'static str,
    meaning: &'static str,
) -> ConfigOption {
    ConfigOption {
        key,
        in_file: false,
        flag,
        env: Some(env),
        default,
        meaning,
    }
}

/// Every option, in the order `config check` and the docs list them.
pub const OPTIONS: &[ConfigOption] = &[
    outside_file(
        "config",
        Some("--config"),
        "KEYFLOW_CONFIG",
        "none",
        "The TOML file read below the environment and flags.",
    ),
    option(
        "listen",
        Some("--listen"),
        Some("KEYFLOW_LISTEN"),
        "127.0.0.1:8080",
        "Address and port the server listens on.",
    ),
    option(
        "metrics_listen",
        Some("--metrics-listen"),
        Some("KEYFLOW_METRICS_LISTEN"),
        "none",
        "Serve `/metrics` (and `/livez`) on this address only, not on `listen`.",
    ),
    option(
        "data_dir",
        Some("--data-dir"),
        Some("KEYFLOW_DATA_DIR"),
        "./keyflow-data",
        "Where the embedded SQLite database lives (created owner-only).",
    ),
    option(
        "database_url",
        Some("--database-url"),
        Some("KEYFLOW_DATABASE_URL"),
        "sqlite://<data_dir>/keyflow.db",
        "`sqlite://PATH` or `postgres://USER@HOST/DB`. A password in it is never printed.",
    ),
    option(
        "database_url_file",
        Some("--database-url-file"),
        Some("KEYFLOW_DATABASE_URL_FILE"),
        "none",
        "Read `database_url` from this file (for URLs with a password); beats `KEYFLOW_DATABASE_URL`.",
    ),
    option(
        "redis_url",
        Some("--redis-url"),
        Some("KEYFLOW_REDIS_URL"),
        "none",
        "Redis shared by several instances: shared rate limits, and changes (revocations) reach every instance at once. `redis://` only.",
    ),
    outside_file(
        "admin_token",
        None,
        "KEYFLOW_ADMIN_TOKEN",
        "none: `/admin/v1` is 404",
        "The instance admin token (16 characters at least); prefer `admin_token_file`.",
    ),
    option(
        "admin_token_file",
        Some("--admin-token-file"),
        Some("KEYFLOW_ADMIN_TOKEN_FILE"),
        "none",
        "File holding the instance admin token; enables `/admin/v1`. Beats `KEYFLOW_ADMIN_TOKEN`.",
    ),
    option(
        "trusted_proxies",
        Some("--trusted-proxies"),
        Some("KEYFLOW_TRUSTED_PROXIES"),
        "none",
        "Proxies whose `X-Forwarded-For` is believed: comma-separated addresses or CIDRs (in the file, a list).",
    ),
    option(
        "rate_limit",
        Some("--rate-limit"),
        Some("KEYFLOW_RATE_LIMIT"),
        "100/60",
        "Default quota per key and endpoint category, `LIMIT/SECONDS`.",
    ),
    option(
        "plan_rate_limits",
        None,
        None,
        "the default",
        "Per-plan quotas: a table, e.g. `[plan_rate_limits]` `team = \"1000/60\"`.",
    ),
    option(
        "failed_auth_per_minute",
        Some("--failed-auth-per-minute"),
        Some("KEYFLOW_FAILED_AUTH_PER_MINUTE"),
        "300",
        "Failed authentications allowed per client address per minute (then `429`).",
    ),
    option(
        "log_format",
        Some("--log-format"),
        Some("KEYFLOW_LOG_FORMAT"),
        "text",
        "`text` (coloured only on a terminal) or `json` (one object per line).",
    ),
    outside_file(
        "log",
        None,
        "KEYFLOW_LOG",
        "info",
        "Log filter (`tracing` syntax), e.g. `keyflow_store=debug` for the store's spans.",
    ),
    option(
        "request_timeout_secs",
        Some("--request-timeout-secs"),
        Some("KEYFLOW_REQUEST_TIMEOUT_SECS"),
        "30",
        "Seconds before a request is answered `408`.",
    ),
    option(
        "last_used_flush_secs",
        Some("--last-used-flush-secs"),
        Some("KEYFLOW_LAST_USED_FLUSH_SECS"),
        "30",
        "Seconds between writes of keys' last-used data (1–30).",
    ),
    option(
        "header_read_timeout_secs",
        Some("--header-read-timeout-secs"),
        Some("KEYFLOW_HEADER_READ_TIMEOUT_SECS"),
        "10",
        "Seconds a client has to send a request's headers; also the idle keep-alive timeout (1–300).",
    ),
    option(
        "max_connections",
        Some("--max-connections"),
        Some("KEYFLOW_MAX_CONNECTIONS"),
        "0",
        "Open connections at most; `0`: the open-file limit minus 128 (at most 100 000).",
    ),
    option(
        "max_connections_per_ip",
        Some("--max-connections-per-ip"),
        Some("KEYFLOW_MAX_CONNECTIONS_PER_IP"),
        "256",
        "Open connections per client address (IPv6: per /64); `0`: no cap; trusted proxies are exempt.",
    ),
    option(
        "shutdown_timeout_secs",
        Some("--shutdown-timeout-secs"),
        Some("KEYFLOW_SHUTDOWN_TIMEOUT_SECS"),
        "30",
        "Seconds SIGTERM waits for in-flight requests (1–3600).",
    ),
    option(
        "webhook_allow_private_networks",
        Some("--webhook-allow-private-networks"),
        Some("KEYFLOW_WEBHOOK_ALLOW_PRIVATE_NETWORKS"),
        "false",
        "Private addresses workflow webhooks may call: `false`, `true`, or CIDR ranges (`10.0.0.0/8,127.0.0.1`; in the file also a list).",
    ),
    option(
        "workflow_run_retention_days",
        Some("--workflow-run-retention-days"),
        Some("KEYFLOW_WORKFLOW_RUN_RETENTION_DAYS"),
        "30",
        "Days finished workflow runs and their attempts are kept (1–3650).",
    ),
    option(
        "key_cache_capacity",
        None,
        None,
        "100000",
        "Resolved keys kept in memory per instance.",
    ),
    option(
        "key_cache_ttl_secs",
        None,
        None,
        "30",
        "Seconds a cached key serves when no change reaches this instance (several instances without Redis).",
    ),
];

/// The option named `key` (a TOML key or an option outside the file).
pub fn find(key: &str) -> Option<&'static ConfigOption> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// The options table of `docs/configuration.md`.
pub fn markdown_table() -> String {
    let code = |s: Option<&str>| s.map_or("—".to_string(), |s| format!("`{s}`"));
    let mut out = String::from(
        "| TOML key | flag | environment | default | meaning |\n|---|---|---|---|---|\n",
    );
    for o in OPTIONS {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            code(o.in_file.then_some(o.key)),
            code(o.flag),
            code(o.env),
            o.default,
            o.meaning
        );
    }
    out
}

/// One line of `keyflow config check`: an option's effective value, secrets
/// redacted, and where it came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Effective {
    pub key: &'static str,
    pub value: String,
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'static str>,
}

impl Config {
    /// Every option's effective value and source. `config_file` and the
    /// log filter are not part of [`Config`]; the caller passes them. The
    /// `_file` options show up as the value they set (`database_url`,
    /// `admin_token`), with the file option as the source.
    pub fn effective(&self, log_filter: Option<&str>) -> Vec<Effective> {
        let mut lines = Vec::new();
        for o in OPTIONS {
            if o.key.ends_with("_file") {
                continue;
            }
            let value = match o.key {
                "config" => self
                    .config_file
                    .as_ref()
                    .map_or("none".into(), |p| p.display().to_string()),
                "log" => log_filter.unwrap_or("info").to_string(),
                key => self.value_of(key),
            };
            let source = self.source_of(o.key);
            lines.push(Effective {
                key: o.key,
                value,
                source: source.kind(),
                from: source.detail(),
            });
        }
        lines
    }

    /// Where `key`'s value came from; the `log` filter only from its variable.
    pub fn source_of(&self, key: &str) -> Source {
        match key {
            "log" if std::env::var_os("KEYFLOW_LOG").is_some() => Source::Env("KEYFLOW_LOG"),
            _ => self
                .sources
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(Source::Default, |(_, s)| *s),
        }
    }

    /// One option's value as `config check` prints it (never a secret).
    fn value_of(&self, key: &str) -> String {
        let none = || "none".to_string();
        match key {
            "listen" => self.listen.to_string(),
            "metrics_listen" => self.metrics_listen.map_or_else(none, |a| a.to_string()),
            "data_dir" => self.data_dir.display().to_string(),
            "database_url" => keyflow_store::redact_url(self.effective_database_url().expose()),
            "redis_url" => self
                .redis_url
                .as_ref()
                .map_or_else(none, |u| keyflow_store::redact_url(u.expose())),
            "admin_token" => match &self.admin_token {
                Some(_) => "set (hidden): /admin/v1 is on".into(),
                None => "none: /admin/v1 is off".into(),
            },
            "trusted_proxies" => {
                if self.trusted_proxies.is_empty() {
                    none()
                } else {
                    let list: Vec<String> =
                        self.trusted_proxies.iter().map(|n| n.to_string()).collect();
                    list.join(",")
                }
            }
            "rate_limit" => quota(&self.default_rate_limit),
            "plan_rate_limits" => {
                let mut plans: Vec<String> = self
                    .plan_rate_limits
                    .iter()
                    .map(|(plan, limit)| format!("{}={}", plan.as_str(), quota(limit)))
                    .collect();
                plans.sort();
                if plans.is_empty() {
                    "the default".into()
                } else {
                    plans.join(",")
                }
            }
            "failed_auth_per_minute" => self.failed_auth_per_minute.to_string(),
            "log_format" => match self.log_format {
                LogFormat::Text => "text".into(),
                LogFormat::Json => "json".into(),
            },
            "request_timeout_secs" => self.request_timeout_secs.to_string(),
            "last_used_flush_secs" => self.last_used_flush_secs.to_string(),
            "header_read_timeout_secs" => self.header_read_timeout_secs.to_string(),
            "max_connections" => self.max_connections.to_string(),
            "max_connections_per_ip" => self.max_connections_per_ip.to_string(),
            "shutdown_timeout_secs" => self.shutdown_timeout_secs.to_string(),
            "webhook_allow_private_networks" => match &self.webhook_allow_private_networks {
                PrivateNetworks::Refused => "false".into(),
                PrivateNetworks::Allowed => "true".into(),
                PrivateNetworks::Ranges(ranges) => {
                    let list: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
                    list.join(",")
                }
            },
            "workflow_run_retention_days" => self.workflow_run_retention_days.to_string(),
            "key_cache_capacity" => self.key_cache_capacity.to_string(),
            "key_cache_ttl_secs" => self.key_cache_ttl_secs.to_string(),
            // Every key of OPTIONS is matched above; a new one shows up here
            // (and the test of `effective` fails) until it is added.
            _ => "?".into(),
        }
    }
}

fn quota(limit: &RateLimit) -> String {
    format!("{}/{}", limit.limit, limit.period_seconds)
}
