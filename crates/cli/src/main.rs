//! The `keyflow` binary: `serve` and `config check` (in `serve.rs`), `init`, `keys create|list|revoke`,
//! `workspace plan|list`, `projects list`, `migrate`, `backup`.

mod args;
mod contacts_csv;
mod database;
mod failure;
mod serve;

use std::process::ExitCode;
use std::sync::Arc;

use keyflow_core::key_settings::{CreateKeyRequest, validate_create};
use keyflow_core::{Clock, Environment, Plan, SystemClock};
use keyflow_server::Config;
use keyflow_server::api::views::{issued_key_json, key_json, project_json, workspace_json};
use keyflow_server::config::{Secret, read_secret_file};
use keyflow_server::error::ApiError;
use keyflow_server::operations::{keys as key_ops, tenancy};
use keyflow_server::usage::UsageTracker;
use keyflow_store::{Actor, Store};
use serde_json::{Value, json};

use crate::args::{
    Cli, Command, ConfigCommand, ContactsCommand, FlagSources, KeysCommand, MigrateArgs, PageArgs,
    ProjectsCommand, WorkspaceCommand, overrides,
};
use crate::database::{
    create_data_dir, open_existing_store, open_store, open_store_without_migrating, sqlite_file,
};
use crate::failure::Failure;
use crate::serve::{print_config, serve, serve_overrides};

/// mimalloc: the request path allocates small short-lived buffers all the
/// time, and glibc's malloc was a visible share of the server's CPU under
/// load (docs/benchmarks.md, "What was changed").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sources = FlagSources::of(&matches);
    let env_from = args::env_sourced(&matches);
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
    match runtime.block_on(run(cli, sources, env_from)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.print(json_output);
            ExitCode::FAILURE
        }
    }
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

async fn run(cli: Cli, sources: FlagSources, env_from: Vec<&'static str>) -> Result<(), Failure> {
    let mut o = overrides(&cli);
    if sources.database_url_file_flag && sources.database_url_from_env {
        // --database-url-file beats KEYFLOW_DATABASE_URL (but not --database-url, its sibling flag).
        o.database_url = None;
    }
    let now = SystemClock.now_ms();
    match &cli.command {
        Command::Serve(args) => {
            serve_overrides(&mut o, args, sources);
            let config = Config::load(&o)?;
            serve(config).await
        }
        Command::Config(ConfigCommand::Check(args)) => {
            serve_overrides(&mut o, args, sources);
            o.from_env = env_from;
            let config = Config::load(&o)?;
            print_config(cli.json, &config)
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
        Command::Migrate(MigrateArgs { to: Some(to) }) => {
            let config = Config::load(&o)?;
            create_data_dir(&config)?;
            let from = config.effective_database_url();
            let copied = keyflow_store::copy::sqlite_to_postgres(from.expose(), to)
                .await
                .map_err(|e| format!("migrate --to {}: {e}", keyflow_store::redact_url(to)))?;
            let total: i64 = copied.tables.iter().map(|(_, n)| n).sum();
            let mut text = format!(
                "Copied {total} rows in {} tables into {}; every table's row count matches.\n",
                copied.tables.len(),
                keyflow_store::redact_url(to)
            );
            for (table, rows) in &copied.tables {
                text.push_str(&format!("  {table}: {rows}\n"));
            }
            text.push_str(
                "Now stop the SQLite instance and start Keyflow on PostgreSQL: set \
                 KEYFLOW_DATABASE_URL (or database_url in the config file, or \
                 --database-url-file for a URL with a password) to that URL.",
            );
            print_result(
                cli.json,
                &json!({
                    "copied": copied.tables.iter().map(|(t, n)| json!({"table": t, "rows": n})).collect::<Vec<_>>(),
                    "rows": total,
                    "database_url": keyflow_store::redact_url(to),
                }),
                &text,
            )?;
            Ok(())
        }
        Command::Migrate(MigrateArgs { to: None }) => {
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
            let new = tenancy::NewInstance {
                email: &args.email,
                password: password.expose().to_string(),
                workspace_name: &args.workspace,
                project_name: &args.project,
                environment,
                plan,
            };
            let boot = tenancy::bootstrap(store.as_ref(), new, now).await?;
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
            let store = existing_store(&o).await?;
            let project = project_of(store.as_ref(), project).await?;
            let request = CreateKeyRequest {
                name: Some(name.clone()),
                key_type: Some(key_type.clone()),
                scopes: (!scopes.is_empty()).then(|| scopes.clone()),
                expires_at: expires_at.clone(),
                ..Default::default()
            };
            let spec = validate_create(&request, now).map_err(ApiError::validation)?;
            let issued = key_ops::create_key(
                &instance_ctx(store.as_ref(), now),
                &project,
                spec,
                key_ops::KeyAuthority::Instance,
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
        Command::Keys(KeysCommand::Revoke { project, key_id }) => {
            // The servers' Redis, from the environment or the config file:
            // they are told to drop the key at once.
            if o.redis_url.is_none() {
                o.redis_url = std::env::var("KEYFLOW_REDIS_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .map(Secret::new);
            }
            let config = Config::load(&o)?;
            let store = open_existing_store(&config).await?;
            let found = project_of(store.as_ref(), project).await?;
            let key = store
                .get_api_key(project, key_id)
                .await?
                .ok_or_else(|| format!("no API key {key_id} in project {project}"))?;
            let (bus, changes) = recording_bus();
            let mut ctx = instance_ctx(store.as_ref(), now);
            ctx.bus = &bus;
            let revoked = key.revoked_at.is_none()
                && keyflow_server::operations::keys::revoke_key(
                    &ctx,
                    &found.workspace_id,
                    &key,
                    keyflow_server::operations::keys::KeyAuthority::Instance,
                )
                .await?;
            let changes = std::mem::take(&mut *changes.lock().unwrap_or_else(|p| p.into_inner()));
            let told = match &config.redis_url {
                Some(url) if !changes.is_empty() => Some(
                    keyflow_server::redis_link::RedisLink::publish_once(url.expose(), &changes)
                        .await,
                ),
                _ => None,
            };
            let ttl = config.key_cache_ttl_secs;
            let text = match (revoked, &told) {
                (false, _) => format!("{} ({}…) was already revoked.", key.id, key.prefix),
                (true, Some(Ok(()))) => format!(
                    "Revoked {} ({}…); every server connected to Redis refuses it from now on.",
                    key.id, key.prefix
                ),
                (true, Some(Err(e))) => format!(
                    "Revoked {} ({}…), but {e}: running servers refuse it within their key \
                     cache lifetime ({ttl} s).",
                    key.id, key.prefix
                ),
                (true, None) => format!(
                    "Revoked {} ({}…). Running servers refuse it within their key cache lifetime \
                     ({ttl} s); with Redis configured (KEYFLOW_REDIS_URL) they are told at once.",
                    key.id, key.prefix
                ),
            };
            print_result(
                cli.json,
                &json!({
                    "id": key.id,
                    "prefix": key.prefix,
                    "revoked": true,
                    "already_revoked": !revoked,
                    "servers_told": matches!(told, Some(Ok(()))),
                }),
                &text,
            )
        }
        Command::Contacts(ContactsCommand::Import {
            file,
            project,
            dry_run,
        }) => {
            let store = existing_store(&o).await?;
            let found = project_of(store.as_ref(), project).await?;
            let ctx = instance_ctx(store.as_ref(), now);
            let summary =
                contacts_csv::import::import(&ctx, &found.workspace_id, project, file, *dry_run)
                    .await?;
            print_result(cli.json, &summary, &summary.text(file))
        }
        Command::Contacts(ContactsCommand::Export { project, output }) => {
            let store = existing_store(&o).await?;
            project_of(store.as_ref(), project).await?;
            let summary =
                contacts_csv::export::export(store.as_ref(), project, output.as_deref()).await?;
            let text = format!(
                "Exported {} contacts with {} property columns{}.",
                summary.contacts,
                summary.properties,
                output
                    .as_ref()
                    .map(|p| format!(" to {}", p.display()))
                    .unwrap_or_default()
            );
            let text = if summary.late_properties > 0 {
                format!(
                    "{text} {} property values appeared during the export and are not in it; export again to include them.",
                    summary.late_properties
                )
            } else {
                text
            };
            // The CSV itself may be on standard output: the summary goes
            // to standard error then.
            if output.is_some() {
                print_result(cli.json, &summary, &text)
            } else {
                if cli.json {
                    eprintln!("{}", serde_json::to_string(&summary)?);
                } else {
                    eprintln!("{text}");
                }
                Ok(())
            }
        }
        Command::Keys(KeysCommand::List {
            project,
            include_revoked,
            page,
        }) => {
            let store = existing_store(&o).await?;
            project_of(store.as_ref(), project).await?;
            let page = store_page(page);
            let keys = store
                .list_api_keys(project, *include_revoked, &page)
                .await?;
            let usage = UsageTracker::default();
            let text = keys
                .iter()
                .map(|k| {
                    let state = if k.revoked_at.is_some() {
                        " (revoked)"
                    } else {
                        ""
                    };
                    format!(
                        "{}  {}…  {}  {:?}{state}",
                        k.id,
                        k.prefix,
                        k.key_type.as_str(),
                        k.settings.name
                    )
                })
                .collect::<Vec<_>>();
            print_page(
                cli.json,
                &keys,
                &page,
                |k| &k.id,
                |k| key_json(k, &usage),
                text,
            )
        }
        Command::Workspace(WorkspaceCommand::List { page }) => {
            let store = existing_store(&o).await?;
            let page = store_page(page);
            let workspaces = store.list_workspaces(&page).await?;
            let text = workspaces
                .iter()
                .map(|w| format!("{}  {}  {:?}", w.id, w.plan.as_str(), w.name))
                .collect();
            print_page(
                cli.json,
                &workspaces,
                &page,
                |w| &w.id,
                workspace_json,
                text,
            )
        }
        Command::Projects(ProjectsCommand::List { workspace }) => {
            let store = existing_store(&o).await?;
            store
                .get_workspace(workspace)
                .await?
                .ok_or_else(|| format!("no workspace with id {workspace}"))?;
            let projects = store.list_projects(workspace).await?;
            let value = json!({ "data": projects.iter().map(project_json).collect::<Vec<_>>() });
            let text = projects
                .iter()
                .map(|p| format!("{}  {}  {:?}", p.id, p.environment.as_str(), p.name))
                .collect::<Vec<_>>()
                .join("\n");
            print_result(cli.json, &value, &text)?;
            Ok(())
        }
        Command::Workspace(WorkspaceCommand::Plan { workspace, plan }) => {
            let store = existing_store(&o).await?;
            let plan =
                Plan::parse(plan).ok_or_else(|| "PLAN must be free, pro or team".to_string())?;
            let (updated, previous) =
                tenancy::change_plan(&instance_ctx(store.as_ref(), now), workspace, plan).await?;
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

/// The context of a change the CLI makes: the instance admin, no address,
/// and no running server to tell (its caches expire on their own).
/// The store of an instance that must already exist (the commands that
/// work on one refuse to create a SQLite file).
async fn existing_store(
    o: &keyflow_server::config::ConfigOverrides,
) -> Result<Arc<dyn Store>, Failure> {
    open_existing_store(&Config::load(o)?).await
}

fn store_page(args: &PageArgs) -> keyflow_store::Page {
    keyflow_store::Page {
        limit: args.limit,
        cursor: args.cursor.clone(),
    }
}

/// A page of a list: as the API answers it with `--json`, else one line per
/// item and, when there may be more, the `--cursor` for the next page.
fn print_page<'r, T, V: serde::Serialize>(
    json_output: bool,
    rows: &'r [T],
    page: &keyflow_store::Page,
    id: impl Fn(&T) -> &str,
    render: impl Fn(&'r T) -> V,
    lines: Vec<String>,
) -> Result<(), Failure> {
    let value = keyflow_server::api::list_page(rows, page, id, render);
    let mut text = lines.join("\n");
    if let Some(next) = &value.next_cursor {
        text.push_str(&format!("\n(more: --cursor {next})"));
    }
    print_result(json_output, &value, &text)
}

/// The project a command names, or a failure that names the id.
async fn project_of(store: &dyn Store, id: &str) -> Result<keyflow_store::Project, Failure> {
    Ok(store
        .get_project(id)
        .await?
        .ok_or_else(|| format!("no project with id {id}"))?)
}

/// A change bus that keeps what it is told, for the CLI to send on to
/// running servers through Redis.
fn recording_bus() -> (
    keyflow_server::changes::LocalChangeBus,
    Arc<std::sync::Mutex<Vec<keyflow_server::changes::Change>>>,
) {
    let bus = keyflow_server::changes::LocalChangeBus::default();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    bus.subscribe(move |change| {
        sink.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change.clone());
    });
    (bus, seen)
}

fn instance_ctx(store: &dyn Store, now: i64) -> keyflow_server::operations::Ctx<'_> {
    keyflow_server::operations::Ctx {
        store,
        bus: &keyflow_server::changes::NoListeners,
        actor: Actor::InstanceAdmin,
        ip: None,
        now,
        workflow_depth: 0,
    }
}
