//! Workflows pages (SPEC §10): the list with the last 24 hours' runs, a
//! workflow (its trigger and steps in words, the trigger form and the
//! steps' JSON editor (`super::trigger_form`), activate /
//! pause / archive, rotating the signing secret with a one-time reveal,
//! its runs), and a run (each step, each attempt, Retry and Cancel).
//! Everyone in the workspace may look; owners and admins change.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_core::workflows::runs::RunStatus;
use keyflow_core::workflows::{Step, Trigger};
use keyflow_store::{RunAttempt, RunFilter, RunStep, Workflow, WorkflowRun};
use serde_json::Value;

use super::extract::{Manager, ManagerForm, Viewer};
use super::page::{Chrome, PageError, PageResult, field_errors, render, shown_time};
use super::trigger_form::{self, TriggerForm};
use crate::error::ApiError;
use crate::operations::workflows::{self as workflow_ops, WorkflowInput, secret_prefix};
use crate::state::SharedState;

/// One row of the list.
struct Row {
    id: String,
    name: String,
    status: &'static str,
    trigger: String,
    version: i64,
    completed: i64,
    failed: i64,
}

#[derive(Template)]
#[template(path = "workflows.html")]
struct ListPage<'a> {
    chrome: Chrome,
    project_id: &'a str,
    can_manage: bool,
    rows: Vec<Row>,
}

/// The trigger in words.
fn trigger_words(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Event { event, conditions } if conditions.is_empty() => {
            format!("event {event}")
        }
        Trigger::Event { event, conditions } => {
            format!("event {event} when {} condition(s) hold", conditions.len())
        }
        Trigger::ContactUpdated { property, to: None } => format!("contact {property} changes"),
        Trigger::ContactUpdated {
            property,
            to: Some(to),
        } => format!("contact {property} changes to {to}"),
        Trigger::SubscriptionChanged { subscribed: true } => "contact subscribes".into(),
        Trigger::SubscriptionChanged { subscribed: false } => "contact unsubscribes".into(),
        Trigger::Api => "API call".into(),
    }
}

/// The steps as indented lines of words.
fn step_lines(steps: &[Step], depth: usize, out: &mut Vec<(usize, String)>) {
    for step in steps {
        let words = match step {
            Step::Webhook { url, method, .. } => {
                format!(
                    "{} {url}",
                    serde_json::to_value(method)
                        .ok()
                        .and_then(|m| m.as_str().map(str::to_string))
                        .unwrap_or_default()
                )
            }
            Step::UpdateContact { properties } => format!(
                "update the contact: {}",
                properties.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Step::Subscribe => "subscribe the contact".into(),
            Step::Unsubscribe => "unsubscribe the contact".into(),
            Step::Wait { seconds } => format!("wait {seconds} s"),
            Step::Branch { conditions, .. } => {
                format!("if {} condition(s) hold", conditions.len())
            }
            Step::Exit => "end the run".into(),
        };
        out.push((depth, words));
        if let Step::Branch {
            then, otherwise, ..
        } = step
        {
            out.push((depth + 1, "then:".into()));
            step_lines(then, depth + 2, out);
            if !otherwise.is_empty() {
                out.push((depth + 1, "else:".into()));
                step_lines(otherwise, depth + 2, out);
            }
        }
    }
}

/// `GET /workflows`.
pub async fn list(viewer: Viewer, State(state): State<SharedState>) -> PageResult {
    let page = keyflow_store::Page {
        limit: 1000,
        cursor: None,
    };
    let workflows = state.store.workflows(&viewer.project.id, &page).await?;
    let since = state.now_ms() - 86_400_000;
    let counts = state
        .store
        .run_counts_since(&viewer.project.id, since)
        .await?;
    let count = |id: &str, status: &str| {
        counts
            .iter()
            .filter(|(w, s, _)| w == id && s == status)
            .map(|(_, _, n)| *n)
            .sum()
    };
    let rows = workflows
        .iter()
        .map(|w| Row {
            id: w.id.clone(),
            name: w.name.clone(),
            status: w.status.as_str(),
            trigger: trigger_words(&w.trigger),
            version: w.version,
            completed: count(&w.id, "completed"),
            failed: count(&w.id, "failed"),
        })
        .collect();
    let can_manage = viewer.membership.role.can_manage();
    let list = ListPage {
        chrome: viewer.chrome("/workflows", "Workflows"),
        project_id: &viewer.project.id,
        can_manage,
        rows,
    };
    Ok(render(StatusCode::OK, &list))
}

#[derive(Template)]
#[template(path = "workflow.html")]
struct DetailPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
    can_manage: bool,
    /// `None`: the create form.
    workflow: Option<&'a Workflow>,
    trigger: String,
    lines: Vec<(usize, String)>,
    secret_prefix: &'a str,
    /// The editor's fields, as stored or as typed.
    name: String,
    trigger_form: TriggerForm,
    steps_json: String,
    message: Option<String>,
    runs: Vec<RunRow>,
    status_filter: String,
    /// (value, label, selected) of the run filter and the reentry choice.
    status_options: Vec<(&'static str, &'static str, bool)>,
    reentry_options: Vec<(&'static str, bool)>,
    kinds: &'static [(&'static str, &'static str)],
    ops: &'static [(&'static str, &'static str)],
}

struct RunRow {
    id: String,
    status: &'static str,
    contact_id: String,
    created: String,
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

async fn show(
    state: &SharedState,
    viewer: &Viewer,
    workflow: Option<&Workflow>,
    status: StatusCode,
    message: Option<String>,
    typed: Option<&HashMap<String, String>>,
    status_filter: Option<&str>,
) -> PageResult {
    let mut lines = Vec::new();
    let mut runs = Vec::new();
    if let Some(w) = workflow {
        step_lines(&w.steps, 0, &mut lines);
        let filter = RunFilter {
            status: status_filter.and_then(RunStatus::parse),
            contact_id: None,
        };
        let page = keyflow_store::Page {
            limit: 50,
            cursor: None,
        };
        runs = state
            .store
            .workflow_runs(&w.id, &filter, &page)
            .await?
            .into_iter()
            .map(|r| RunRow {
                status: r.status.as_str(),
                created: shown_time(r.created_at),
                contact_id: r.contact_id,
                id: r.id,
            })
            .collect();
    }
    let typed_or =
        |field: &str, stored: String| typed.and_then(|t| t.get(field).cloned()).unwrap_or(stored);
    let reentry = typed_or(
        "reentry",
        workflow
            .map_or("one_active_run", |w| w.reentry.as_str())
            .to_string(),
    );
    let page = DetailPage {
        chrome: viewer.chrome(
            "/workflows",
            workflow.map_or("New workflow", |w| w.name.as_str()),
        ),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
        can_manage: viewer.membership.role.can_manage(),
        trigger: workflow
            .map(|w| trigger_words(&w.trigger))
            .unwrap_or_default(),
        lines,
        secret_prefix: workflow.map_or("", |w| secret_prefix(&w.signing_secret)),
        name: typed_or("name", workflow.map(|w| w.name.clone()).unwrap_or_default()),
        trigger_form: match typed {
            Some(values) => TriggerForm::typed(values),
            None => TriggerForm::of(workflow.map(|w| &w.trigger)),
        },
        kinds: &trigger_form::KINDS,
        ops: &trigger_form::OPS,
        steps_json: typed_or(
            "steps",
            workflow.map_or_else(
                || "[\n  {\"type\": \"webhook\", \"url\": \"https://example.com/hook\"}\n]".into(),
                |w| pretty(&w.steps),
            ),
        ),
        reentry_options: ["one_active_run", "every_time", "once"]
            .into_iter()
            .map(|r| (r, r == reentry))
            .collect(),
        status_options: [
            ("", "any"),
            ("running", "running"),
            ("waiting", "waiting"),
            ("completed", "completed"),
            ("failed", "failed"),
            ("cancelled", "cancelled"),
        ]
        .into_iter()
        .map(|(value, label)| (value, label, value == status_filter.unwrap_or("")))
        .collect(),
        workflow,
        message,
        runs,
        status_filter: status_filter.unwrap_or_default().to_string(),
    };
    Ok(render(status, &page))
}

/// `GET /workflows/new`.
pub async fn new_form(Manager(viewer): Manager, State(state): State<SharedState>) -> PageResult {
    show(&state, &viewer, None, StatusCode::OK, None, None, None).await
}

/// The editor's fields as an operation's input (`status` only on create).
fn input(values: &HashMap<String, String>) -> Result<WorkflowInput, String> {
    let json = |field: &str| -> Result<Option<Value>, String> {
        match values.get(field).map(|t| t.trim()) {
            None | Some("") => Ok(None),
            Some(text) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| format!("The {field} are not valid JSON: {e}.")),
        }
    };
    Ok(WorkflowInput {
        name: values.get("name").map(|n| Value::String(n.clone())),
        status: None,
        reentry: values.get("reentry").map(|r| Value::String(r.clone())),
        trigger: trigger_form::trigger_json(values),
        steps: json("steps")?,
    })
}

/// The editor's problems, the trigger's named by the form's labels.
fn editor_errors(fields: &[keyflow_core::FieldError]) -> String {
    field_errors(&fields.iter().map(trigger_form::label).collect::<Vec<_>>())
}

#[derive(Template)]
#[template(path = "workflow_secret.html")]
struct SecretPage<'a> {
    chrome: Chrome,
    project_id: &'a str,
    workflow_id: &'a str,
    secret: &'a str,
}

fn reveal(viewer: &Viewer, workflow: &Workflow, secret: &str) -> Response {
    let page = SecretPage {
        chrome: viewer.chrome("/workflows", "Signing secret"),
        project_id: &viewer.project.id,
        workflow_id: &workflow.id,
        secret,
    };
    crate::api::no_store(render(StatusCode::OK, &page))
}

/// `POST /workflows/new`: create (as a draft), then the one-time reveal of
/// the signing secret.
pub async fn create(State(state): State<SharedState>, form: ManagerForm) -> PageResult {
    let viewer = &form.viewer;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let checked = input(&form.values)
        .and_then(|input| workflow_ops::validate(&input, true).map_err(|f| editor_errors(&f)));
    let change = match checked {
        Ok(change) => change,
        Err(message) => {
            return show(
                &state,
                viewer,
                None,
                unprocessable,
                Some(message),
                Some(&form.values),
                None,
            )
            .await;
        }
    };
    let made = workflow_ops::create(&form.ctx(&state), &viewer.project, change).await?;
    Ok(reveal(viewer, &made.workflow, &made.secret))
}

async fn load(state: &SharedState, viewer: &Viewer, id: &str) -> Result<Workflow, PageError> {
    Ok(workflow_ops::find(state.store.as_ref(), &viewer.project.id, id).await?)
}

/// `GET /workflows/{id}`.
pub async fn detail(
    viewer: Viewer,
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let workflow = load(&state, &viewer, &id).await?;
    let filter = query
        .get("status")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    show(
        &state,
        &viewer,
        Some(&workflow),
        StatusCode::OK,
        None,
        None,
        filter,
    )
    .await
}

/// `POST /workflows/{id}`: the editor's changes (name, reentry, trigger,
/// steps) or an action (`activate`, `pause`, `archive`, `rotate`).
pub async fn change(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    form: ManagerForm,
) -> PageResult {
    let viewer = &form.viewer;
    let ctx = form.ctx(&state);
    let back =
        Redirect::to(&format!("/workflows/{id}?project={}", viewer.project.id)).into_response();
    let status = |s: &str| WorkflowInput {
        status: Some(Value::String(s.into())),
        ..WorkflowInput::default()
    };
    let action = form.field("action");
    let outcome = match action {
        "activate" | "pause" => {
            let wanted = if action == "activate" {
                "active"
            } else {
                "paused"
            };
            let change =
                workflow_ops::validate(&status(wanted), false).map_err(|f| field_errors(&f));
            match change {
                Ok(change) => workflow_ops::update(&ctx, &viewer.project, &id, change)
                    .await
                    .map(|_| ()),
                Err(message) => {
                    return Err(
                        ApiError::new(keyflow_core::ErrorCode::ValidationFailed, message).into(),
                    );
                }
            }
        }
        "archive" => workflow_ops::archive(&ctx, &viewer.project, &id)
            .await
            .map(|_| ()),
        "rotate" => {
            let rotated = workflow_ops::rotate_secret(&ctx, &viewer.project, &id).await?;
            return Ok(reveal(viewer, &rotated.workflow, &rotated.secret));
        }
        _ => {
            let workflow = load(&state, viewer, &id).await?;
            let checked = input(&form.values).and_then(|input| {
                workflow_ops::validate(&input, false).map_err(|f| editor_errors(&f))
            });
            let change = match checked {
                Ok(change) => change,
                Err(message) => {
                    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
                    return show(
                        &state,
                        viewer,
                        Some(&workflow),
                        unprocessable,
                        Some(message),
                        Some(&form.values),
                        None,
                    )
                    .await;
                }
            };
            workflow_ops::update(&ctx, &viewer.project, &id, change)
                .await
                .map(|_| ())
        }
    };
    match outcome {
        Ok(()) => Ok(back),
        Err(e) => {
            let workflow = load(&state, viewer, &id).await?;
            let message = ApiError::from(e).message;
            show(
                &state,
                viewer,
                Some(&workflow),
                StatusCode::CONFLICT,
                Some(message),
                None,
                None,
            )
            .await
        }
    }
}

#[derive(Template)]
#[template(path = "workflow_run.html")]
struct RunPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
    can_manage: bool,
    run: &'a WorkflowRun,
    created: String,
    finished: Option<String>,
    steps: Vec<(RunStep, Vec<RunAttempt>, Option<String>)>,
    message: Option<String>,
}

async fn load_run(
    state: &SharedState,
    viewer: &Viewer,
    id: &str,
) -> Result<WorkflowRun, PageError> {
    Ok(state
        .store
        .workflow_run(&viewer.project.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("workflow run"))?)
}

async fn show_run(
    state: &SharedState,
    viewer: &Viewer,
    run: &WorkflowRun,
    status: StatusCode,
    message: Option<String>,
) -> PageResult {
    let (steps, attempts) = state.store.run_steps(&run.id).await?;
    let steps = steps
        .into_iter()
        .map(|s| {
            let mine = attempts
                .iter()
                .filter(|a| a.path == s.path)
                .cloned()
                .collect();
            let next = s.next_attempt_at.map(shown_time);
            (s, mine, next)
        })
        .collect();
    let page = RunPage {
        chrome: viewer.chrome("/workflows", "Workflow run"),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
        can_manage: viewer.membership.role.can_manage(),
        created: shown_time(run.created_at),
        finished: run.finished_at.map(shown_time),
        run,
        steps,
        message,
    };
    Ok(render(status, &page))
}

/// `GET /workflow-runs/{id}`.
pub async fn run(
    viewer: Viewer,
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> PageResult {
    let run = load_run(&state, &viewer, &id).await?;
    show_run(&state, &viewer, &run, StatusCode::OK, None).await
}

/// `POST /workflow-runs/{id}`: `retry` or `cancel`.
pub async fn act_on_run(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    form: ManagerForm,
) -> PageResult {
    let viewer = &form.viewer;
    let run = load_run(&state, viewer, &id).await?;
    let ctx = form.ctx(&state);
    let done = match form.field("action") {
        "retry" => workflow_ops::retry_run(&ctx, &viewer.project, &run).await,
        "cancel" => workflow_ops::cancel_run(&ctx, &viewer.project, &run).await,
        _ => return Err(ApiError::field("action", "must be retry or cancel").into()),
    };
    match done {
        Ok(()) => {
            state.workflow_wake.notify_one();
            Ok(Redirect::to(&format!(
                "/workflow-runs/{id}?project={}",
                viewer.project.id
            ))
            .into_response())
        }
        Err(e) => {
            let message = ApiError::from(e).message;
            show_run(&state, viewer, &run, StatusCode::CONFLICT, Some(message)).await
        }
    }
}
