//! The command line: commands, flags, and which values came from a flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keyflow_server::ConfigOverrides;
use keyflow_server::config::Secret;

/// The heading of the options every command takes, listed after its own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "keyflow",
    version,
    about = "Keyflow: customer API with a first-class API-key platform"
)]
pub struct Cli {
    /// sqlite://PATH or postgres://USER@HOST/DB (default: SQLite in the data dir)
    #[arg(
        long,
        global = true,
        env = "KEYFLOW_DATABASE_URL",
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    pub database_url: Option<String>,
    /// Read the database URL from a file (for URLs with passwords)
    #[arg(long, global = true, env = "KEYFLOW_DATABASE_URL_FILE", help_heading = GLOBAL)]
    pub database_url_file: Option<PathBuf>,
    /// Where the embedded SQLite database lives
    #[arg(long, global = true, env = "KEYFLOW_DATA_DIR", help_heading = GLOBAL)]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file (below environment and flags in precedence)
    #[arg(long, global = true, env = "KEYFLOW_CONFIG", help_heading = GLOBAL)]
    pub config: Option<PathBuf>,
    /// Print results, and errors, as JSON (one object on standard output)
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies migrations first)
    Serve(ServeArgs),
    /// Create the first workspace, project and owner, non-interactively
    Init(InitArgs),
    /// Manage API keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage workspaces
    #[command(subcommand, visible_alias = "workspaces")]
    Workspace(WorkspaceCommand),
    /// List projects
    #[command(subcommand, visible_alias = "project")]
    Projects(ProjectsCommand),
    /// Import and export a project's contacts as CSV
    #[command(subcommand, visible_alias = "contact")]
    Contacts(ContactsCommand),
    /// Apply database migrations; with --to, copy this (SQLite) database
    /// into an empty PostgreSQL database
    Migrate(MigrateArgs),
    /// Inspect the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a consistent copy of the embedded SQLite database to FILE, safe
    /// while the server runs (PostgreSQL: use pg_dump)
    Backup {
        /// Where to write the copy (must not exist)
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, env = "KEYFLOW_LISTEN")]
    pub listen: Option<String>,
    /// Serve /metrics on this address only (e.g. 127.0.0.1:9090), not on --listen
    #[arg(long, env = "KEYFLOW_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Redis URL for multi-instance rate limits and revocation broadcast
    #[arg(long, env = "KEYFLOW_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// File holding the instance admin token (enables /admin/v1)
    #[arg(long, env = "KEYFLOW_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Proxies whose X-Forwarded-For is trusted (comma-separated addresses/CIDRs)
    #[arg(long, env = "KEYFLOW_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Default quota per key and category, LIMIT/SECONDS (e.g. 100/60)
    #[arg(long, env = "KEYFLOW_RATE_LIMIT")]
    pub rate_limit: Option<String>,
    /// Failed authentications allowed per client IP per minute
    #[arg(long, env = "KEYFLOW_FAILED_AUTH_PER_MINUTE")]
    pub failed_auth_per_minute: Option<u32>,
    /// text or json
    #[arg(long, env = "KEYFLOW_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Seconds before a request is answered 408
    #[arg(long, env = "KEYFLOW_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Seconds between flushes of last-used data (1-30)
    #[arg(long, env = "KEYFLOW_LAST_USED_FLUSH_SECS")]
    pub last_used_flush_secs: Option<u64>,
    /// Seconds a client has to send a request's headers; idle keep-alive
    /// connections close after the same time (default 10)
    #[arg(long, env = "KEYFLOW_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Open connections at most (default: what the open-file limit allows)
    #[arg(long, env = "KEYFLOW_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections per client address (IPv6 /64) at most (default 256;
    /// 0: no per-address cap; trusted proxies are exempt)
    #[arg(long, env = "KEYFLOW_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Seconds SIGTERM waits for in-flight requests (default 30)
    #[arg(long, env = "KEYFLOW_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Private networks workflow webhooks may call: true, false (default)
    /// or comma-separated CIDR ranges (e.g. 10.0.0.0/8)
    #[arg(long, env = "KEYFLOW_WEBHOOK_ALLOW_PRIVATE_NETWORKS")]
    pub webhook_allow_private_networks: Option<String>,
    /// Days finished workflow runs are kept (default 30)
    #[arg(long, env = "KEYFLOW_WORKFLOW_RUN_RETENTION_DAYS")]
    pub workflow_run_retention_days: Option<u64>,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration `serve` would use, each value with
    /// its source (default, file, env or flag), secrets hidden; exits 1 when
    /// a value is invalid. Takes the same options as `serve`.
    Check(ServeArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// The owner's email address (their dashboard sign-in)
    #[arg(long)]
    pub email: String,
    /// File holding the owner's password
    #[arg(long)]
    pub password_file: PathBuf,
    /// The workspace's name
    #[arg(long)]
    pub workspace: String,
    /// The first project's name
    #[arg(long)]
    pub project: String,
    /// The project's environment: live or test (keys say sk_live_ / sk_test_)
    #[arg(long, default_value = "live")]
    pub environment: String,
    /// The workspace's plan: free, pro or team (the API needs pro or team)
    #[arg(long, default_value = "free")]
    pub plan: String,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it once
    Create {
        /// The project the key belongs to (its id)
        #[arg(long)]
        project: String,
        /// A name for people (shown in lists and the activity log)
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
    /// Revoke an API key at once (answers 401 key_revoked from then on)
    Revoke {
        /// The project the key belongs to (its id)
        #[arg(long)]
        project: String,
        /// The key's id (as `keys list` prints it)
        key_id: String,
    },
    /// List a project's API keys, newest first (never a secret)
    List {
        /// The project whose keys to list (its id)
        #[arg(long)]
        project: String,
        /// Also list revoked keys
        #[arg(long)]
        include_revoked: bool,
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Subcommand)]
pub enum ContactsCommand {
    /// Create or update contacts from a CSV file whose header row names the
    /// fields (email, external_id, first_name, last_name, subscribed,
    /// properties.NAME; any other column is a property); re-running it
    /// updates the same contacts
    Import {
        /// The CSV file (UTF-8, comma-separated, header row first)
        file: PathBuf,
        /// The project whose contacts these are (its id)
        #[arg(long)]
        project: String,
        /// Check every row and say what would be created or updated; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Write every contact of a project as CSV, in the columns import reads
    Export {
        /// The project whose contacts to write (its id)
        #[arg(long)]
        project: String,
        /// Where to write (owner-only; replaced when complete); default: standard output
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// One page of a list: as many as `--limit`, after `--cursor` (the
/// `next_cursor` the previous page printed).
#[derive(Args)]
pub struct PageArgs {
    /// How many to list (1-1000)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Continue after this point: the next_cursor the previous page printed
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// List a workspace's projects
    List {
        /// The workspace whose projects to list (its id)
        #[arg(long)]
        workspace: String,
    },
}

#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// Change a workspace's plan (free, pro, team)
    Plan {
        /// The workspace to change (its id)
        #[arg(long)]
        workspace: String,
        /// The new plan: free, pro or team
        plan: String,
    },
    /// List the instance's workspaces, newest first
    List {
        #[command(flatten)]
        page: PageArgs,
    },
}

/// Which values came from a flag rather than the environment: a flag must win
/// over any environment variable, including one for a sibling setting (e.g.
/// `--database-url-file` over `KEYFLOW_DATABASE_URL`).
#[derive(Default, Clone, Copy)]
pub struct FlagSources {
    pub database_url_file_flag: bool,
    pub database_url_from_env: bool,
    pub admin_token_file_flag: bool,
}

impl FlagSources {
    pub fn of(matches: &clap::ArgMatches) -> Self {
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

/// The option keys whose value came from an environment variable (clap
/// reads both; `config check` tells them apart).
pub fn env_sourced(matches: &clap::ArgMatches) -> Vec<&'static str> {
    use clap::parser::ValueSource;
    let mut found = Vec::new();
    let mut level = Some(matches);
    while let Some(m) = level {
        for id in m.ids() {
            if m.value_source(id.as_str()) == Some(ValueSource::EnvVariable)
                && let Some(option) = keyflow_server::config::OPTIONS
                    .iter()
                    .find(|o| o.key == id.as_str())
            {
                found.push(option.key);
            }
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    // Read by hand, not by clap (see `serve_overrides`).
    found.push("admin_token");
    found
}

pub fn overrides(cli: &Cli) -> ConfigOverrides {
    ConfigOverrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        database_url: cli.database_url.clone().map(Secret::new),
        database_url_file: cli.database_url_file.clone(),
        ..Default::default()
    }
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Copy the whole embedded SQLite database into this empty PostgreSQL
    /// database (postgres://…), verify the row counts and print the config
    /// change
    #[arg(long, value_name = "POSTGRES_URL")]
    pub to: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use keyflow_server::config::OPTIONS;

    /// Every flag `serve` (and `config check`) takes is in the options
    /// table, with the same environment variable; every flag and variable
    /// the table names exists.
    #[test]
    fn serve_flags_and_the_options_table_agree() {
        let cli = super::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        let mut seen = Vec::new();
        for arg in cli.get_arguments().chain(serve.get_arguments()) {
            let Some(long) = arg.get_long() else { continue };
            if long == "json" {
                continue; // output format, not configuration
            }
            let flag = format!("--{long}");
            let option = OPTIONS
                .iter()
                .find(|o| o.flag == Some(flag.as_str()))
                .unwrap_or_else(|| panic!("{flag} is not in config::OPTIONS"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                option.env,
                "{flag}'s environment variable"
            );
            assert!(arg.get_help().is_some(), "{flag} has no help line");
            seen.push(option.key);
        }
        for option in OPTIONS.iter().filter(|o| o.flag.is_some()) {
            assert!(seen.contains(&option.key), "{} has no flag", option.key);
        }
    }

    /// Every argument of every command says what it is for.
    #[test]
    fn every_argument_has_a_help_line() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path}: no about"));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "keyflow", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
