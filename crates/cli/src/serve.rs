//! `keyflow serve` and `keyflow config check`: the options `serve` takes,
//! logging, the server's start and its graceful stop.

use std::sync::Arc;

use keyflow_core::SystemClock;
use keyflow_server::Config;
use keyflow_server::config::{LogFormat, Secret};

use crate::args::{FlagSources, ServeArgs};
use crate::database::open_store;
use crate::failure::Failure;

/// The values `serve` (and `config check`) take from its own flags and
/// environment variables.
pub fn serve_overrides(
    o: &mut keyflow_server::config::ConfigOverrides,
    args: &ServeArgs,
    sources: FlagSources,
) {
    o.listen = args.listen.clone();
    o.metrics_listen = args.metrics_listen.clone();
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
    o.webhook_allow_private_networks = args.webhook_allow_private_networks.clone();
    o.workflow_run_retention_days = args.workflow_run_retention_days;
    o.shutdown_timeout_secs = args.shutdown_timeout_secs;
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only on a terminal: a log file or pipe gets plain text.
    // A span's end is logged with its duration: the store's spans (debug)
    // show what each call cost once KEYFLOW_LOG enables them; at the
    // default `info` they are off and nothing more is written.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

pub async fn serve(config: Config) -> Result<(), Failure> {
    init_logging(config.log_format);
    if let Some(url) = &config.redis_url {
        keyflow_server::redis_link::RedisLink::new(url.expose())?;
        tracing::info!(
            "Redis configured: rate limits and changes are shared with the other instances"
        );
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

/// `keyflow config check`: every option's effective value and its source.
pub fn print_config(json_output: bool, config: &Config) -> Result<(), Failure> {
    let log_filter = std::env::var("KEYFLOW_LOG").ok();
    let lines = config.effective(log_filter.as_deref());
    let width = lines.iter().map(|l| l.key.len()).max().unwrap_or(0);
    let mut text = String::from("The configuration is valid. Effective values:\n");
    for line in &lines {
        let source = match line.from {
            Some(from) => format!("{} ({from})", line.source),
            None => line.source.to_string(),
        };
        text.push_str(&format!(
            "  {:width$}  {}  [{source}]\n",
            line.key, line.value
        ));
    }
    text.push_str("Precedence: default < file < env < flag. Every option: docs/configuration.md.");
    crate::print_result(
        json_output,
        &serde_json::json!({ "valid": true, "options": lines }),
        &text,
    )
}
