//! The `keyflow` binary: `serve`, `init`, `keys create`, `workspace plan`,
//! `migrate`, `backup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use keyflow_core::key_settings::{CreateKeyRequest, validate_create};
use keyflow_core::{Clock, Environment, Plan, SystemClock};
use keyflow_server::api::repr::{issued_key_json, project_json, workspace_json};
use keyflow_server::config::{LogFormat, Secret, read_secret_file};
use keyflow_server::error::ApiError;
use keyflow_server::operations::{keys as key_ops, tenancy};
use keyflow_server::usage::UsageTracker;
use keyflow_server::{Config, ConfigOverrides};
use keyflow_store::{Actor, Store};
use serde_json::{Value, json};

/// mimalloc: the request path allocates small short-lived buffers all the
/// time, and glibc's malloc showed up at ~15% of the server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keyflow",
    version,
    about = "Keyflow: customer API with a first-class API-key platform"
)]
struct Cli {
    /// sqlite://PATH or postgres://USER@HOST/DB (default: SQLite in the data dir)
    #[arg(
        long,
        global = true,
        env = "KEYFLOW_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Read the database URL from a file (for URLs with passwords)
    #[arg(long, global = true, env = "KEYFLOW_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// Where the embedded SQLite database lives
    #[arg(long, global = true, env = "KEYFLOW_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (below environment and flags in precedence)
    #[arg(long, global = true, env = "KEYFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Print results as JSON
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (applies migrations first)
    Serve(ServeArgs),
    /// Create the first workspace, project and owner, non-interactively
    Init(InitArgs),
    /// Manage API keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage workspaces
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Apply database migrations
    Migrate,
    /// Write a consistent copy of the embedded SQLite database to FILE, safe
    /// while the server runs (PostgreSQL: use pg_dump)
    Backup {
        /// Where to write the copy (must not exist)
        file: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on
    #[arg(long, env = "KEYFLOW_LISTEN")]
    listen: Option<String>,
    /// Redis URL for multi-instance rate limits and revocation broadcast
    #[arg(long, env = "KEYFLOW_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// File holding the instance admin token (enables /admin/v1)
    #[arg(long, env = "KEYFLOW_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Proxies whose X-Forwarded-For is trusted (comma-separated addresses/CIDRs)
    #[arg(long, env = "KEYFLOW_TRUSTED_PROXIES")]
    trusted_proxies: Option<String>,
    /// Default quota per key and category, LIMIT/SECONDS (e.g. 100/60)
    #[arg(long, env = "KEYFLOW_RATE_LIMIT")]
    rate_limit: Option<String>,
    /// Failed authentications allowed per client IP per minute
    #[arg(long, env = "KEYFLOW_FAILED_AUTH_PER_MINUTE")]
    failed_auth_per_minute: Option<u32>,
    /// text or json
    #[arg(long, env = "KEYFLOW_LOG_FORMAT")]
    log_format: Option<String>,
    /// Seconds before a request is answered 408
    #[arg(long, env = "KEYFLOW_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// Seconds between flushes of last-used data (1-30)
    #[arg(long, env = "KEYFLOW_LAST_USED_FLUSH_SECS")]
    last_used_flush_secs: Option<u64>,
    /// Seconds a client has to send a request's headers; idle keep-alive
    /// connections close after the same time (default 10)
    #[arg(long, env = "KEYFLOW_HEADER_READ_TIMEOUT_SECS")]
    header_read_timeout_secs: Option<u64>,
    /// Open connections at most (default: what the open-file limit allows)
    #[arg(long, env = "KEYFLOW_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open connections per client address (IPv6 /64) at most (default 256;
    /// 0: no per-address cap; trusted proxies are exempt)
    #[arg(long, env = "KEYFLOW_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Seconds SIGTERM waits for in-flight requests (default 30)
    #[arg(long, env = "KEYFLOW_SHUTDOWN_TIMEOUT_SECS")]
    shutdown_timeout_secs: Option<u64>,
}

#[derive(Args)]
struct InitArgs {
    #[arg(long)]
    email: String,
    /// File holding the owner's password
    #[arg(long)]
    password_file: PathBuf,
    #[arg(long)]
    workspace: String,
    #[arg(long)]
    project: String,
    #[arg(long, default_value = "live")]
    environment: String,
    #[arg(long, default_value = "free")]
    plan: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key and print it once
    Create {
        #[arg(long)]
        project: String,
        #[arg(long)]
        name: String,
        /// secret, client or read_only
        #[arg(long = "type")]
        key_type: String,
        /// A scope such as contacts:read (repeatable; default: the type's default)
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// RFC 3339 expiry
        #[arg(long)]
        expires_at: Option<String>,
    },
}

#[derive(Subcommand)]
enum WorkspaceCommand {
    /// Change a workspace's plan (free, pro, team)
    Plan {
        #[arg(long)]
        workspace: String,
        plan: String,
    },
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sources = FlagSources::of(&matches);
    let json_output = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyflow: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, sources)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.print(json_output);
            ExitCode::FAILURE
        }
    }
}

/// A command failure: a message, and the API error behind it when there is one.
struct Failure {
    message: String,
    api: Option<ApiError>,
}

impl Failure {
    fn print(&self, json_output: bool) {
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

fn overrides(cli: &Cli) -> ConfigOverrides {
    ConfigOverrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone().map(Secret::new),
        database_url_file: cli.database_url_file.clone(),
        ..Default::default()
    }
}

/// Creates the data directory (owner-only) for the embedded database.
fn create_data_dir(config: &Config) -> Result<(), Failure> {
    if config.database_url.is_some() || config.data_dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The embedded database file this configuration names, if it is SQLite.
fn sqlite_file(config: &Config) -> Option<PathBuf> {
    keyflow_store::sqlite::files::path_of_url(config.effective_database_url().expose())
}

/// For commands that work on an existing instance (everything but `init`,
/// `migrate` and `serve`): refuse a SQLite file that does not exist rather
/// than create an empty one and then report "no project with id …".
async fn open_existing_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    if let Some(path) = sqlite_file(config)
        && !path.is_file()
    {
        return Err(Failure::from(format!(
            "no Keyflow database at {}: run this where `keyflow serve` runs, or pass the \
             same --data-dir / --database-url (KEYFLOW_DATA_DIR / KEYFLOW_DATABASE_URL); \
             `keyflow init` creates a new one",
            path.display()
        )));
    }
    open_store(config).await
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    create_data_dir(config)?;
    let url = config.effective_database_url();
    let store = keyflow_store::connect(url.expose()).await.map_err(|e| {
        format!(
            "cannot open database {}: {e}",
            keyflow_store::redact_url(url.expose())
        )
    })?;
    store.migrate().await?;
    Ok(store)
}

fn print_result(
    json_output: bool,
    value: &impl serde::Serialize,
    text: &str,
) -> Result<(), Failure> {
    if json_output {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Which values came from a flag rather than the environment: a flag must win
/// over any environment variable, including one for a sibling setting (e.g.
/// `--database-url-file` over `KEYFLOW_DATABASE_URL`).
#[derive(Default, Clone, Copy)]
struct FlagSources {
    database_url_file_flag: bool,
    database_url_from_env: bool,
    admin_token_file_flag: bool,
}

impl FlagSources {
    fn of(matches: &clap::ArgMatches) -> Self {
        use clap::parser::ValueSource;
        let flag = |m: &clap::ArgMatches, id: &str| {
            m.try_get_raw(id).ok().flatten().is_some()
                && m.value_source(id) == Some(ValueSource::CommandLine)
        };
        let serve = matches.subcommand_matches("serve");
        Self {
            database_url_file_flag: flag(matches, "database_url_file"),
            database_url_from_env: matches.value_source("database_url")
                == Some(ValueSource::EnvVariable),
            admin_token_file_flag: serve.is_some_and(|m| flag(m, "admin_token_file")),
        }
    }
}

async fn run(cli: Cli, sources: FlagSources) -> Result<(), Failure> {
    let mut o = overrides(&cli);
    if sources.database_url_file_flag && sources.database_url_from_env {
        // --database-url-file beats KEYFLOW_DATABASE_URL (but not --database-url, its sibling flag).
        o.database_url = None;
    }
    let now = SystemClock.now_ms();
    match &cli.command {
        Command::Serve(args) => {
            o.listen = args.listen.clone();
            o.redis_url = args.redis_url.clone().map(Secret::new);
            o.admin_token_file = args.admin_token_file.clone();
            // KEYFLOW_ADMIN_TOKEN (environment) yields to --admin-token-file (flag).
            o.admin_token = std::env::var("KEYFLOW_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty() && !sources.admin_token_file_flag)
                .map(Secret::new);
            o.trusted_proxies = args.trusted_proxies.clone();
            o.rate_limit = args.rate_limit.clone();
            o.failed_auth_per_minute = args.failed_auth_per_minute;
            o.log_format = args.log_format.clone();
            o.request_timeout_secs = args.request_timeout_secs;
            o.last_used_flush_secs = args.last_used_flush_secs;
            o.header_read_timeout_secs = args.header_read_timeout_secs;
            o.max_connections = args.max_connections;
            o.max_connections_per_ip = args.max_connections_per_ip;
            o.shutdown_timeout_secs = args.shutdown_timeout_secs;
            let config = Config::load(&o)?;
            serve(config).await
        }
        Command::Backup { file } => {
            let config = Config::load(&o)?;
            let Some(source) = sqlite_file(&config) else {
                return Err(Failure::from(
                    "keyflow backup copies the embedded SQLite database; for PostgreSQL use \
                     pg_dump (or your provider's snapshots)"
                        .to_string(),
                ));
            };
            keyflow_store::sqlite::files::backup(&source, file)
                .map_err(|e| format!("cannot back up {}: {e}", source.display()))?;
            print_result(
                cli.json,
                &json!({ "source": source, "backup": file }),
                &format!(
                    "Wrote a consistent copy of {} to {} (readable by you only).",
                    source.display(),
                    file.display()
                ),
            )?;
            Ok(())
        }
        Command::Migrate => {
            let config = Config::load(&o)?;
            let store = open_store_without_migrating(&config).await?;
            let applied = store.migrate().await?;
            let text = if applied.is_empty() {
                "Database is up to date.".to_string()
            } else {
                format!("Applied migrations: {}", applied.join(", "))
            };
            print_result(
                cli.json,
                &json!({ "applied": applied, "backend": store.backend_name() }),
                &text,
            )?;
            Ok(())
        }
        Command::Init(args) => {
            let config = Config::load(&o)?;
            let store = open_store(&config).await?;
            let password = read_secret_file(&args.password_file)?;
            let environment = Environment::parse(&args.environment)
                .ok_or_else(|| "--environment must be live or test".to_string())?;
            let plan = Plan::parse(&args.plan)
                .ok_or_else(|| "--plan must be free, pro or team".to_string())?;
            let boot = tenancy::bootstrap(
                store.as_ref(),
                &args.email,
                password.expose().to_string(),
                &args.workspace,
                &args.project,
                environment,
                plan,
                now,
            )
            .await?;
            let value = json!({
                "workspace": workspace_json(&boot.workspace),
                "project": project_json(&boot.project),
                "owner": { "id": boot.owner.id, "email": boot.owner.email, "role": "owner" },
            });
            let text = format!(
                "Created workspace {} ({}, plan {}), project {} ({}, {}), owner {}.",
                boot.workspace.name,
                boot.workspace.id,
                boot.workspace.plan.as_str(),
                boot.project.name,
                boot.project.id,
                boot.project.environment.as_str(),
                boot.owner.email
            );
            print_result(cli.json, &value, &text)?;
            Ok(())
        }
        Command::Keys(KeysCommand::Create {
            project,
            name,
            key_type,
            scopes,
            expires_at,
        }) => {
            let config = Config::load(&o)?;
            let store = open_existing_store(&config).await?;
            let project = store
                .get_project(project)
                .await?
                .ok_or_else(|| format!("no project with id {project}"))?;
            let request = CreateKeyRequest {
                name: Some(name.clone()),
                key_type: Some(key_type.clone()),
                scopes: (!scopes.is_empty()).then(|| scopes.clone()),
                expires_at: expires_at.clone(),
                ..Default::default()
            };
            let spec = validate_create(&request, now).map_err(ApiError::validation)?;
            let issued = key_ops::create_key(
                store.as_ref(),
                &keyflow_server::changes::NoListeners,
                &project,
                spec,
                &Actor::InstanceAdmin,
                key_ops::KeyAuthority::Instance,
                None,
                now,
            )
            .await?;
            let value = issued_key_json(&issued.key, &issued.secret, &UsageTracker::default());
            let text = format!(
                "Created {} key {:?} ({}…) with scopes {}.\nThis is the only time the key is shown; store it now:\n{}",
                issued.key.key_type.as_str(),
                issued.key.settings.name,
                issued.key.prefix,
                issued.key.scopes.to_strings().join(", "),
                issued.secret
            );
            print_result(cli.json, &value, &text)?;
            Ok(())
        }
        Command::Workspace(WorkspaceCommand::Plan { workspace, plan }) => {
            let config = Config::load(&o)?;
            let store = open_existing_store(&config).await?;
            let plan =
                Plan::parse(plan).ok_or_else(|| "PLAN must be free, pro or team".to_string())?;
            let (updated, previous) = tenancy::change_plan(
                store.as_ref(),
                &keyflow_server::changes::NoListeners,
                workspace,
                plan,
                &Actor::InstanceAdmin,
                None,
                now,
            )
            .await?;
            let mut value = serde_json::to_value(workspace_json(&updated))?;
            if let Value::Object(map) = &mut value {
                map.insert(
                    "previous_plan".into(),
                    Value::String(previous.as_str().into()),
                );
            }
            let text = format!(
                "Workspace {} plan: {} -> {}.",
                updated.id,
                previous.as_str(),
                updated.plan.as_str()
            );
            print_result(cli.json, &value, &text)?;
            Ok(())
        }
    }
}

async fn open_store_without_migrating(config: &Config) -> Result<Arc<dyn Store>, Failure> {
    create_data_dir(config)?;
    let url = config.effective_database_url();
    Ok(keyflow_store::connect(url.expose()).await.map_err(|e| {
        format!(
            "cannot open database {}: {e}",
            keyflow_store::redact_url(url.expose())
        )
    })?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: a log file or pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config) -> Result<(), Failure> {
    init_logging(config.log_format);
    if config.redis_url.is_some() {
        return Err(Failure::from(
            "Redis support (shared rate limits and revocation broadcast) is not built yet; \
             run without --redis-url / KEYFLOW_REDIS_URL"
                .to_string(),
        ));
    }
    let store = open_store(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        address = %address,
        database = store.backend_name(),
        admin_api = config.admin_token.is_some(),
        "keyflow listening"
    );
    let needs_setup = store.count_operators().await? == 0;
    let state = keyflow_server::build_state(config, store, Arc::new(SystemClock));
    if needs_setup {
        // The one-time first-run link: creates the owner, workspace and project.
        let token = state
            .issue_setup_token()
            .map_err(|e| format!("cannot create the setup token: {e}"))?;
        println!(
            "Keyflow has no operator yet. Open http://{address}/setup?token={token} to set it up (works once)."
        );
        tracing::info!(
            setup_path = "/setup",
            "first-run setup link printed on stdout"
        );
    }
    keyflow_server::launch_with_listener(state, listener, shutdown_signal()).await?;
    tracing::info!("keyflow stopped cleanly");
    Ok(())
}

/// SIGTERM or Ctrl-C: stop accepting, drain, flush, exit 0.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested: draining in-flight requests");
}
