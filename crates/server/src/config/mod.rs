//! One configuration struct, layered: defaults < TOML file < `KEYFLOW_*`
//! environment < command-line flags. The CLI reads env and flags (clap does
//! both, flags winning) into [`ConfigOverrides`]; [`Config::load`] applies the
//! file first and those overrides on top.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use keyflow_core::{Plan, RateLimit};
use serde::Deserialize;

mod options;
pub use options::{ConfigOption, Effective, OPTIONS, Source, markdown_table};

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Serve `/metrics` on this address only (not on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// `None`: SQLite at `<data_dir>/keyflow.db`.
    pub database_url: Option<Secret>,
    pub redis_url: Option<Secret>,
    pub trusted_proxies: Vec<IpNet>,
    /// Enables `/admin/v1` when set.
    pub admin_token: Option<Secret>,
    /// Per-category default when neither the plan nor the key overrides it.
    pub default_rate_limit: RateLimit,
    pub plan_rate_limits: HashMap<Plan, RateLimit>,
    /// Failed authentications allowed per client IP per minute.
    pub failed_auth_per_minute: u32,
    pub log_format: LogFormat,
    pub request_timeout_secs: u64,
    pub key_cache_capacity: u64,
    /// How long a resolved key may be served from this instance's cache when no
    /// invalidation reaches it (other instances' changes without Redis).
    pub key_cache_ttl_secs: u64,
    pub last_used_flush_secs: u64,
    /// A client must send a request's headers within this time; an idle
    /// keep-alive connection is closed after it too (SPEC §7).
    pub header_read_timeout_secs: u64,
    /// Open connections at most; `0` derives it from the open-file limit.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) at most, so a
    /// few addresses cannot take every slot; `0` = no per-address cap.
    /// Peers in `trusted_proxies` are exempt (a proxy carries many clients).
    pub max_connections_per_ip: usize,
    /// How long SIGTERM waits for in-flight requests before closing them.
    pub shutdown_timeout_secs: u64,
    /// A Metrics API SQL query is stopped after this long (SPEC §4: 5 s).
    pub query_timeout_ms: u64,
    /// Memory one Metrics API SQL query may use on SQLite.
    pub query_max_memory_bytes: usize,
    /// SQLite: the write-ahead log size past which new SQL queries wait
    /// until it has been truncated.
    pub query_wal_limit_bytes: u64,
    /// Private destinations webhooks may call (SPEC §10): none by default.
    pub webhook_allow_private_networks: crate::workflows::delivery::PrivateNetworks,
    /// Finished workflow runs and their attempts are kept this many days.
    pub workflow_run_retention_days: u64,
    /// How often the workflow worker looks for due jobs when nothing wakes
    /// it (commits that queue jobs do). Not a setting: tests lengthen it to
    /// show that runs start without waiting for the poll.
    pub workflow_poll_ms: u64,
    /// Metrics API SQL queries running at once on this instance, all
    /// projects together (each project may run two of them).
    pub max_concurrent_queries: usize,
    /// The TOML file read, if any.
    pub config_file: Option<PathBuf>,
    /// Where each value not left at its default came from (option key →
    /// source), for `keyflow config check`.
    pub sources: Vec<(&'static str, Source)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            data_dir: PathBuf::from("./keyflow-data"),
            database_url: None,
            redis_url: None,
            trusted_proxies: Vec::new(),
            admin_token: None,
            default_rate_limit: RateLimit::per_minute(100),
            plan_rate_limits: HashMap::new(),
            failed_auth_per_minute: 300,
            log_format: LogFormat::Text,
            request_timeout_secs: 30,
            key_cache_capacity: 100_000,
            key_cache_ttl_secs: 30,
            last_used_flush_secs: 30,
            header_read_timeout_secs: 10,
            max_connections: 0,
            max_connections_per_ip: 256,
            shutdown_timeout_secs: 30,
            query_timeout_ms: 5_000,
            query_max_memory_bytes: keyflow_store::tenant_sql::DEFAULT_MAX_MEMORY_BYTES,
            query_wal_limit_bytes: 64 * 1024 * 1024,
            max_concurrent_queries: 4,
            webhook_allow_private_networks: Default::default(),
            workflow_run_retention_days: 30,
            workflow_poll_ms: 1_000,
            config_file: None,
            sources: Vec::new(),
        }
    }
}

/// The TOML file. Every field optional; names match the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    metrics_listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    database_url_file: Option<PathBuf>,
    redis_url: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    admin_token_file: Option<PathBuf>,
    rate_limit: Option<String>,
    plan_rate_limits: Option<HashMap<String, String>>,
    failed_auth_per_minute: Option<u32>,
    log_format: Option<LogFormat>,
    request_timeout_secs: Option<u64>,
    key_cache_capacity: Option<u64>,
    key_cache_ttl_secs: Option<u64>,
    last_used_flush_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    shutdown_timeout_secs: Option<u64>,
    webhook_allow_private_networks: Option<toml::Value>,
    workflow_run_retention_days: Option<u64>,
}

/// Values from the environment and flags (already merged by the CLI).
#[derive(Debug, Default, Clone)]
pub struct ConfigOverrides {
    pub config_file: Option<PathBuf>,
    /// Which overrides came from the environment rather than a flag, by
    /// option key (those not named here count as flags).
    pub from_env: Vec<&'static str>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<Secret>,
    pub database_url_file: Option<PathBuf>,
    pub redis_url: Option<Secret>,
    pub trusted_proxies: Option<String>,
    pub admin_token: Option<Secret>,
    pub admin_token_file: Option<PathBuf>,
    pub rate_limit: Option<String>,
    pub failed_auth_per_minute: Option<u32>,
    pub log_format: Option<String>,
    pub request_timeout_secs: Option<u64>,
    pub last_used_flush_secs: Option<u64>,
    pub header_read_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub shutdown_timeout_secs: Option<u64>,
    pub webhook_allow_private_networks: Option<String>,
    pub workflow_run_retention_days: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid {field}: {message}")]
    Value {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        field,
        message: message.into(),
    }
}

fn private_networks(
    text: &str,
) -> Result<crate::workflows::delivery::PrivateNetworks, ConfigError> {
    crate::workflows::delivery::PrivateNetworks::parse(text).map_err(|e| {
        invalid(
            "webhook_allow_private_networks",
            format!("use true, false or a comma-separated list of CIDR ranges: {e}"),
        )
    })
}

/// Reads a secret from a file, trimming the trailing newline editors add.
pub fn read_secret_file(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    parse_address("listen", text)
}

fn parse_address(field: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            field,
            format!("{text:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

fn parse_proxies<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpNet>, ConfigError> {
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            keyflow_core::ip::parse_network(s).ok_or_else(|| {
                invalid(
                    "trusted_proxies",
                    format!("{s:?} is not an address or CIDR"),
                )
            })
        })
        .collect()
}

fn parse_rate_limit(field: &'static str, text: &str) -> Result<RateLimit, ConfigError> {
    RateLimit::parse(text)
        .ok_or_else(|| invalid(field, format!("{text:?} is not LIMIT/SECONDS, e.g. 100/60")))
}

impl Config {
    /// Builds the effective configuration.
    pub fn load(overrides: &ConfigOverrides) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = &overrides.config_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            config.apply_file(file)?;
            config.config_file = Some(path.clone());
            // The keys present (already checked by `deny_unknown_fields`).
            if let Ok(table) = text.parse::<toml::Table>() {
                for key in table.keys() {
                    config.note_source(key, |o| Source::File(o.key));
                }
            }
        }
        config.apply_overrides(overrides)?;
        config.note_override_sources(overrides);
        Ok(config)
    }

    fn apply_file(&mut self, f: ConfigFile) -> Result<(), ConfigError> {
        if let Some(v) = f.listen {
            self.listen = parse_listen(&v)?;
        }
        if let Some(v) = f.metrics_listen {
            self.metrics_listen = Some(parse_address("metrics_listen", &v)?);
        }
        if let Some(v) = f.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = f.database_url {
            self.database_url = Some(Secret::new(v));
        }
        if let Some(path) = f.database_url_file {
            self.database_url = Some(read_secret_file(&path)?);
        }
        if let Some(v) = f.redis_url {
            self.redis_url = Some(Secret::new(v));
        }
        if let Some(v) = f.trusted_proxies {
            self.trusted_proxies = parse_proxies(v.iter().map(String::as_str))?;
        }
        if let Some(path) = f.admin_token_file {
            self.admin_token = Some(read_secret_file(&path)?);
        }
        if let Some(v) = f.rate_limit {
            self.default_rate_limit = parse_rate_limit("rate_limit", &v)?;
        }
        for (plan, limit) in f.plan_rate_limits.unwrap_or_default() {
            let plan = Plan::parse(&plan)
                .ok_or_else(|| invalid("plan_rate_limits", format!("unknown plan {plan:?}")))?;
            self.plan_rate_limits
                .insert(plan, parse_rate_limit("plan_rate_limits", &limit)?);
        }
        if let Some(v) = f.failed_auth_per_minute {
            self.failed_auth_per_minute = v;
        }
        if let Some(v) = f.log_format {
            self.log_format = v;
        }
        if let Some(v) = f.request_timeout_secs {
            self.request_timeout_secs = v;
        }
        if let Some(v) = f.key_cache_capacity {
            self.key_cache_capacity = v;
        }
        if let Some(v) = f.key_cache_ttl_secs {
            self.key_cache_ttl_secs = v;
        }
        if let Some(v) = f.last_used_flush_secs {
            self.last_used_flush_secs = v;
        }
        if let Some(v) = f.header_read_timeout_secs {
            self.header_read_timeout_secs = v;
        }
        if let Some(v) = f.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = f.max_connections_per_ip {
            self.max_connections_per_ip = v;
        }
        if let Some(v) = f.shutdown_timeout_secs {
            self.shutdown_timeout_secs = v;
        }
        if let Some(v) = f.webhook_allow_private_networks {
            // `true`/`false`, or a list of ranges (an array or one string).
            let text = match v {
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::String(s) => s,
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().unwrap_or("?").to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => "?".into(),
            };
            self.webhook_allow_private_networks = private_networks(&text)?;
        }
        if let Some(v) = f.workflow_run_retention_days {
            self.workflow_run_retention_days = v;
        }
        Ok(())
    }

    fn apply_overrides(&mut self, o: &ConfigOverrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.listen {
            self.listen = parse_listen(v)?;
        }
        if let Some(v) = &o.metrics_listen {
            self.metrics_listen = Some(parse_address("metrics_listen", v)?);
        }
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(path) = &o.database_url_file {
            self.database_url = Some(read_secret_file(path)?);
        }
        if let Some(v) = &o.database_url {
            self.database_url = Some(v.clone());
        }
        if let Some(v) = &o.redis_url {
            self.redis_url = Some(v.clone());
        }
        if let Some(v) = &o.trusted_proxies {
            self.trusted_proxies = parse_proxies(v.split(','))?;
        }
        if let Some(path) = &o.admin_token_file {
            self.admin_token = Some(read_secret_file(path)?);
        }
        if let Some(v) = &o.admin_token {
            self.admin_token = Some(v.clone());
        }
        if let Some(v) = &o.rate_limit {
            self.default_rate_limit = parse_rate_limit("rate_limit", v)?;
        }
        if let Some(v) = o.failed_auth_per_minute {
            self.failed_auth_per_minute = v;
        }
        if let Some(v) = &o.log_format {
            self.log_format =
                LogFormat::parse(v).ok_or_else(|| invalid("log_format", "use text or json"))?;
        }
        if let Some(v) = o.request_timeout_secs {
            self.request_timeout_secs = v;
        }
        if let Some(v) = o.last_used_flush_secs {
            self.last_used_flush_secs = v;
        }
        if let Some(v) = o.header_read_timeout_secs {
            self.header_read_timeout_secs = v;
        }
        if let Some(v) = o.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = o.max_connections_per_ip {
            self.max_connections_per_ip = v;
        }
        if let Some(v) = o.shutdown_timeout_secs {
            self.shutdown_timeout_secs = v;
        }
        if let Some(v) = &o.webhook_allow_private_networks {
            self.webhook_allow_private_networks = private_networks(v)?;
        }
        if let Some(v) = o.workflow_run_retention_days {
            self.workflow_run_retention_days = v;
        }
        if !(1..=3650).contains(&self.workflow_run_retention_days) {
            return Err(invalid("workflow_run_retention_days", "must be 1..=3650"));
        }
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            return Err(invalid("header_read_timeout_secs", "must be 1..=300"));
        }
        if !(1..=3600).contains(&self.shutdown_timeout_secs) {
            return Err(invalid("shutdown_timeout_secs", "must be 1..=3600"));
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        if !(1..=30).contains(&self.last_used_flush_secs) {
            // SPEC §2: last_used_at stays within 60 s of reality.
            return Err(invalid("last_used_flush_secs", "must be 1..=30"));
        }
        Ok(())
    }

    /// Records that `key` (a `_file` option counts for the value it sets)
    /// came from `source`, replacing what a lower layer set.
    fn note_source(&mut self, key: &str, source: impl Fn(&ConfigOption) -> Source) {
        let Some(option) = options::find(key) else {
            return;
        };
        let target = match option.key {
            "database_url_file" => "database_url",
            "admin_token_file" => "admin_token",
            key => key,
        };
        let source = source(option);
        self.sources.retain(|(k, _)| *k != target);
        self.sources.push((target, source));
    }

    fn note_override_sources(&mut self, o: &ConfigOverrides) {
        let set = [
            ("config", o.config_file.is_some()),
            ("listen", o.listen.is_some()),
            ("metrics_listen", o.metrics_listen.is_some()),
            ("data_dir", o.data_dir.is_some()),
            ("database_url_file", o.database_url_file.is_some()),
            ("database_url", o.database_url.is_some()),
            ("redis_url", o.redis_url.is_some()),
            ("trusted_proxies", o.trusted_proxies.is_some()),
            ("admin_token_file", o.admin_token_file.is_some()),
            ("admin_token", o.admin_token.is_some()),
            ("rate_limit", o.rate_limit.is_some()),
            ("failed_auth_per_minute", o.failed_auth_per_minute.is_some()),
            ("log_format", o.log_format.is_some()),
            ("request_timeout_secs", o.request_timeout_secs.is_some()),
            ("last_used_flush_secs", o.last_used_flush_secs.is_some()),
            (
                "header_read_timeout_secs",
                o.header_read_timeout_secs.is_some(),
            ),
            ("max_connections", o.max_connections.is_some()),
            ("max_connections_per_ip", o.max_connections_per_ip.is_some()),
            ("shutdown_timeout_secs", o.shutdown_timeout_secs.is_some()),
            (
                "webhook_allow_private_networks",
                o.webhook_allow_private_networks.is_some(),
            ),
            (
                "workflow_run_retention_days",
                o.workflow_run_retention_days.is_some(),
            ),
        ];
        // In `apply_overrides`' order, so the value that won is the one noted.
        for (key, is_set) in set {
            if is_set {
                let env = o.from_env.contains(&key);
                self.note_source(key, |option| match (env, option.env, option.flag) {
                    (true, Some(var), _) => Source::Env(var),
                    (_, _, Some(flag)) => Source::Flag(flag),
                    (_, Some(var), None) => Source::Env(var),
                    (_, None, None) => Source::Default,
                });
            }
        }
    }

    /// The database URL in effect (SQLite in the data dir by default).
    pub fn effective_database_url(&self) -> Secret {
        match &self.database_url {
            Some(url) => url.clone(),
            None => Secret::new(format!(
                "sqlite://{}",
                self.data_dir.join("keyflow.db").display()
            )),
        }
    }

    /// The quota for one category of requests of a workspace on `plan`.
    pub fn plan_rate_limit(&self, plan: Plan) -> RateLimit {
        self.plan_rate_limits
            .get(&plan)
            .copied()
            .unwrap_or(self.default_rate_limit)
    }
}

#[cfg(test)]
mod tests;
