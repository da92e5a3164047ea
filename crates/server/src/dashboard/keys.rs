//! API keys: the list, creation (with the one-time reveal), roll and revoke
//! behind a confirmation. Owners and admins only. Works without JavaScript
//! except the Copy button.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use keyflow_core::IpRule;
use keyflow_core::key_settings::{CreateKeyRequest, IpRuleInput, validate_create};
use keyflow_core::{KeyType, Scope, ScopeSet};
use keyflow_store::{ApiKey, Page, Project};

use super::activity::Choice;
use super::extract::{Manager, ManagerForm, Viewer};
use super::form_errors::FormErrors;
use super::page::{Chrome, PageError, PageResult, refusal, relative_time, render};
use crate::error::ApiError;
use crate::operations::keys as key_ops;
use crate::state::SharedState;

/// An operator's authority over keys: not bound by any key, but tenant
/// rate limits stay under the workspace plan's.
pub(crate) async fn operator_authority(
    state: &SharedState,
    viewer: &Viewer,
) -> Result<key_ops::KeyAuthority<'static>, PageError> {
    let plan = state
        .plan_of(viewer.workspace_id())
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    Ok(key_ops::KeyAuthority::Operator {
        plan_limit: state.config.plan_rate_limit(plan),
    })
}

/// "Full access", or the scopes' descriptions in words.
pub fn access_summary(key_type: KeyType, scopes: ScopeSet) -> String {
    if scopes == ScopeSet::allowed_for(key_type) && key_type == KeyType::Secret {
        return "Full access".into();
    }
    let words: Vec<&str> = scopes.iter().map(Scope::description).collect();
    let mut text = words.join(", ");
    if let Some(first) = text.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    text
}

/// One row of an IP allow-list form.
#[derive(Default)]
pub struct IpRow {
    pub cidr: String,
    pub description: String,
}

impl IpRow {
    /// The stored rules plus one empty row to add another.
    pub fn with_empty_row(rules: &[IpRule]) -> Vec<IpRow> {
        rules
            .iter()
            .map(|r| IpRow {
                cidr: r.cidr.clone(),
                description: r.description.clone(),
            })
            .chain([IpRow::default()])
            .collect()
    }

    /// `count` rows as the form sent them (`cidr_N`, `description_N`).
    pub(crate) fn from_form(values: &HashMap<String, String>, count: usize) -> Vec<IpRow> {
        let text = |name: String| values.get(&name).cloned().unwrap_or_default();
        (0..count)
            .map(|i| IpRow {
                cidr: text(format!("cidr_{i}")),
                description: text(format!("description_{i}")),
            })
            .collect()
    }
}

/// How many allow-list rows a form sent.
pub(crate) fn row_count(values: &HashMap<String, String>) -> usize {
    values.keys().filter(|k| k.starts_with("cidr_")).count()
}

/// The IP allow-list rows of a form (`cidr_N`, `description_N`); empty rows are dropped.
pub(crate) fn ip_rows_from_form(values: &HashMap<String, String>) -> Vec<IpRuleInput> {
    (0..row_count(values))
        .filter_map(|i| {
            let cidr = values
                .get(&format!("cidr_{i}"))
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())?;
            Some(IpRuleInput {
                cidr,
                description: values.get(&format!("description_{i}")).cloned(),
            })
        })
        .collect()
}

/// `expires_at` from a `datetime-local` input, which has no zone: the form says UTC.
pub(crate) fn expiry_from_form(values: &HashMap<String, String>) -> Option<String> {
    values.get("expires_at").filter(|e| !e.is_empty()).map(|e| {
        if e.len() == 16 {
            format!("{e}:00Z")
        } else {
            format!("{e}Z")
        }
    })
}

/// A comma-separated list field: `None` when absent, `Some(None)` when empty.
pub(crate) fn list_field(
    values: &HashMap<String, String>,
    name: &str,
) -> Option<Option<Vec<String>>> {
    let text = values.get(name)?;
    let items: Vec<String> = text
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Some((!items.is_empty()).then_some(items))
}

struct KeyRow {
    id: String,
    name: String,
    key_type: &'static str,
    access: String,
    prefix: String,
    /// (RFC 3339, "3 minutes ago").
    last_used: Option<(String, String)>,
    created: String,
    expires: String,
    state: KeyState,
}

/// Where a key stands, as the list and the key page say it.
pub(crate) struct KeyState {
    /// "Active", "Expires in 3 d", "Rolling", "Expired", "Revoked".
    pub label: String,
    /// More words (when it stops, when it was revoked), or empty.
    pub detail: String,
    /// `active`, `expired` or `revoked`: the list's tab.
    pub tab: &'static str,
    pub can_roll: bool,
    pub can_revoke: bool,
}

const EXPIRING_SOON_MS: i64 = 7 * 86_400_000;

pub(crate) fn key_state(key: &ApiKey, now: i64) -> KeyState {
    let state = |label: String, detail: String, tab, can_roll, can_revoke| KeyState {
        label,
        detail,
        tab,
        can_roll,
        can_revoke,
    };
    let expires = key.settings.expires_at;
    if let Some(at) = key.revoked_at {
        return state(
            "Revoked".into(),
            format!("revoked {}", super::page::shown_time(at)),
            "revoked",
            false,
            false,
        );
    }
    match (expires, key.rolled_at) {
        (Some(at), _) if at <= now => state(
            "Expired".into(),
            format!("since {}", super::page::shown_time(at)),
            "expired",
            false,
            true,
        ),
        (Some(at), Some(_)) => state(
            "Rolling".into(),
            format!("replaced; stops at {}", super::page::shown_time(at)),
            "active",
            false,
            true,
        ),
        (Some(at), None) if at - now <= EXPIRING_SOON_MS => state(
            format!("Expires in {} d", (at - now + 86_399_999) / 86_400_000),
            format!("at {}", super::page::shown_time(at)),
            "active",
            true,
            true,
        ),
        _ => state("Active".into(), String::new(), "active", true, true),
    }
}

#[derive(Template)]
#[template(path = "keys_list.html")]
struct ListPage<'a> {
    chrome: Chrome,
    project: &'a Project,
    projects: &'a [Project],
    keys: Vec<KeyRow>,
    /// The tab shown: `active`, `expired` or `revoked`.
    shown: &'static str,
    tabs: Vec<Tab>,
    /// Set when the workspace's plan suspends every key: the plan, and how
    /// many active keys now answer 403 `feature_not_allowed`.
    suspended: Option<(&'static str, usize)>,
}

pub async fn list(
    Manager(viewer): Manager,
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let all = Page {
        limit: 1000,
        cursor: None,
    };
    let keys = state
        .store
        .list_api_keys(&viewer.project.id, true, &all)
        .await?;
    let now = state.now_ms();
    let shown = match query.get("show").map(String::as_str) {
        Some("expired") => "expired",
        Some("revoked") => "revoked",
        _ => "active",
    };
    let mut counts = [("active", 0usize), ("expired", 0), ("revoked", 0)];
    let mut rows = Vec::new();
    for k in &keys {
        let state_now = key_state(k, now);
        if let Some(count) = counts.iter_mut().find(|(tab, _)| *tab == state_now.tab) {
            count.1 += 1;
        }
        if state_now.tab != shown {
            continue;
        }
        rows.push(KeyRow {
            id: k.id.clone(),
            name: k.settings.name.clone(),
            key_type: k.key_type.as_str(),
            access: access_summary(k.key_type, k.scopes),
            prefix: k.prefix.clone(),
            last_used: k
                .last_used_at
                .max(state.usage.pending(&k.id).map(|p| p.0))
                .map(|at| (super::page::shown_time(at), relative_time(at, now))),
            created: super::page::shown_time(k.created_at),
            expires: k
                .settings
                .expires_at
                .map(super::page::shown_time)
                .unwrap_or_else(|| "Never".into()),
            state: state_now,
        });
    }
    // A plan without API access suspends every key: say so before the list.
    let plan = state.plan_of(viewer.workspace_id()).await?;
    let active = counts[0].1;
    let suspended = plan
        .filter(|p| !p.allows_api())
        .map(|p| (p.as_str(), active));
    let page = ListPage {
        suspended,
        chrome: viewer.chrome("/keys", "API keys"),
        project: &viewer.project,
        projects: &viewer.projects,
        keys: rows,
        shown,
        tabs: counts
            .iter()
            .map(|(tab, n)| Tab {
                value: tab,
                label: match *tab {
                    "active" => "Active",
                    "expired" => "Expired",
                    _ => "Revoked",
                },
                count: *n,
                current: *tab == shown,
            })
            .collect(),
    };
    Ok(render(StatusCode::OK, &page))
}

/// A tab of the keys list.
struct Tab {
    value: &'static str,
    label: &'static str,
    count: usize,
    current: bool,
}

struct ScopeChoice {
    name: &'static str,
    description: &'static str,
    checked: bool,
}

#[derive(Template)]
#[template(path = "key_new.html")]
struct NewKeyPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
    key_type: &'static str,
    types: Vec<Choice>,
    scopes: Vec<ScopeChoice>,
    rows: Vec<IpRow>,
    values: &'a HashMap<String, String>,
    errors: &'a FormErrors,
    /// This rendering's one-time nonce (see [`one_time`]).
    nonce: String,
    project_name: &'a str,
    environment: &'static str,
    /// What the new key will start with (`sk_live_`).
    key_prefix: String,
}

impl NewKeyPage<'_> {
    /// What the form held for `name` (empty on a fresh form).
    fn value(&self, name: &str) -> &str {
        self.values.get(name).map(String::as_str).unwrap_or("")
    }
}

/// The create form: fresh (`values` empty: default scopes checked), or as
/// submitted with what was wrong with it.
fn new_key_page(
    viewer: &Viewer,
    status: StatusCode,
    key_type: KeyType,
    rows: usize,
    values: &HashMap<String, String>,
    scopes_sent: &[&str],
    errors: &FormErrors,
) -> Response {
    let defaults = ScopeSet::default_for(key_type);
    let fresh = values.is_empty();
    let page = NewKeyPage {
        chrome: viewer.chrome("/keys", "Create API key"),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
        key_type: key_type.as_str(),
        types: KeyType::API_TYPES
            .into_iter()
            .map(|t| Choice {
                value: t.as_str(),
                selected: t == key_type,
            })
            .collect(),
        scopes: ScopeSet::allowed_for(key_type)
            .iter()
            .map(|s| ScopeChoice {
                name: s.as_str(),
                description: s.description(),
                checked: fresh && defaults.contains(s) || scopes_sent.contains(&s.as_str()),
            })
            .collect(),
        rows: IpRow::from_form(values, rows),
        values,
        errors,
        nonce: form_nonce(),
        project_name: &viewer.project.name,
        environment: viewer.project.environment.as_str(),
        key_prefix: format!(
            "{}_{}_",
            key_type.wire_prefix(),
            viewer.project.environment.as_str()
        ),
    };
    render(status, &page)
}

/// A fresh one-time nonce for a form that creates a key (creating or
/// rolling): posted twice (a refresh or back/forward on the reveal), the
/// form creates nothing the second time. Empty if the random source failed
/// (the post is then refused and the form shown again).
pub(crate) fn form_nonce() -> String {
    keyflow_core::keys::random_base62(32).unwrap_or_default()
}

#[derive(Template)]
#[template(path = "key_already.html")]
struct AlreadyPage<'a> {
    chrome: Chrome,
    project_id: &'a str,
    key_id: Option<&'a str>,
}

/// Claims the nonce of a posted one-time form. `Err` is the page to answer
/// when the form was posted before: it links to the key the first post made.
async fn one_time(
    state: &SharedState,
    viewer: &Viewer,
    nonce: &str,
) -> Result<Result<(), Response>, PageError> {
    if nonce.len() < 16 {
        return Err(
            ApiError::field("form", "is out of date: reload the page and send it again").into(),
        );
    }
    match state.store.claim_form(nonce, state.now_ms()).await? {
        keyflow_store::FormClaim::Fresh => Ok(Ok(())),
        keyflow_store::FormClaim::Used { result_id } => Ok(Err(render(
            StatusCode::CONFLICT,
            &AlreadyPage {
                chrome: viewer.chrome("/keys", "Key already created"),
                project_id: &viewer.project.id,
                key_id: result_id.as_deref(),
            },
        ))),
    }
}

pub async fn new_form(
    Manager(viewer): Manager,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let key_type = query
        .get("type")
        .and_then(|t| KeyType::parse_api_type(t))
        .unwrap_or(KeyType::Secret);
    new_key_page(
        &viewer,
        StatusCode::OK,
        key_type,
        1,
        &HashMap::new(),
        &[],
        &FormErrors::default(),
    )
}

pub async fn create(State(state): State<SharedState>, form: ManagerForm) -> PageResult {
    let (viewer, values) = (&form.viewer, &form.values);
    let key_type = KeyType::parse_api_type(form.field("type")).unwrap_or(KeyType::Secret);
    let scopes: Vec<&str> = form
        .pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    let rows = row_count(values).max(1);
    let again = |status, rows, errors: &FormErrors| {
        new_key_page(viewer, status, key_type, rows, values, &scopes, errors)
    };
    // "Add a row" re-renders the form with one more allow-list row; nothing is created.
    if let Ok(more) = form.field("more_rows").parse::<usize>() {
        return Ok(again(StatusCode::OK, more.min(100), &FormErrors::default()));
    }
    let request = CreateKeyRequest {
        name: values.get("name").cloned(),
        key_type: Some(key_type.as_str().to_string()),
        scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
        expires_at: expiry_from_form(values),
        ip_allowlist: Some(ip_rows_from_form(values)),
        allowed_events: list_field(values, "allowed_events").flatten(),
        ..Default::default()
    };
    let now = state.now_ms();
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let spec = match validate_create(&request, now) {
        Ok(spec) => spec,
        Err(fields) => {
            return Ok(again(
                unprocessable,
                rows,
                &FormErrors::from_fields(&fields),
            ));
        }
    };
    let nonce = form.field("form_nonce");
    if let Err(already) = one_time(&state, viewer, nonce).await? {
        return Ok(already);
    }
    let authority = operator_authority(&state, viewer).await;
    let created = match authority {
        Ok(authority) => {
            key_ops::create_key(&form.ctx(&state), &viewer.project, spec, authority).await
        }
        Err(e) => {
            state.store.finish_form(nonce, None).await?;
            return Err(e);
        }
    };
    Ok(match created {
        Ok(issued) => {
            state.store.finish_form(nonce, Some(&issued.key.id)).await?;
            reveal(viewer, &issued.key, &issued.secret, form.origin.as_deref())
        }
        Err(e) => {
            // Nothing was made: the same form may be sent again.
            state.store.finish_form(nonce, None).await?;
            again(unprocessable, rows, &FormErrors::general(refusal(e)))
        }
    })
}

#[derive(Template)]
#[template(path = "key_reveal.html")]
struct RevealPage<'a> {
    chrome: Chrome,
    secret: &'a str,
    key_type: &'static str,
    name: &'a str,
    access: String,
    project_id: &'a str,
    /// A first use to paste: a curl call, or the page snippet of a client key.
    try_it: String,
}

/// The one-time reveal: the only page that ever shows the full key, with a
/// first use of it ready to paste (`origin`: where the browser reached
/// Keyflow).
fn reveal(viewer: &Viewer, key: &ApiKey, secret: &str, origin: Option<&str>) -> Response {
    let base = origin.unwrap_or("https://your-keyflow-host");
    let try_it = match key.key_type {
        KeyType::Client => format!(
            "<script src=\"{base}/embed.js\"></script>\n\
             <script>keyflow.init(\"{secret}\", {{ host: \"{base}\" }});\n\
             keyflow.track(\"page_view\", {{ path: location.pathname }});</script>"
        ),
        _ => format!("curl {base}/v1/keys/self -H \"Authorization: Bearer {secret}\""),
    };
    let page = RevealPage {
        chrome: viewer.chrome("/keys", "New API key"),
        secret,
        key_type: key.key_type.as_str(),
        name: &key.settings.name,
        access: access_summary(key.key_type, key.scopes),
        project_id: &viewer.project.id,
        try_it,
    };
    render(StatusCode::OK, &page)
}

/// An unrevoked key of the viewer's project.
pub(crate) async fn key_of(
    state: &SharedState,
    viewer: &Viewer,
    id: &str,
) -> Result<ApiKey, PageError> {
    match state.store.get_api_key(&viewer.project.id, id).await? {
        Some(k) if k.revoked_at.is_none() => Ok(k),
        _ => Err(ApiError::not_found("API key").into()),
    }
}

#[derive(Template)]
#[template(path = "key_confirm.html")]
struct ConfirmPage<'a> {
    chrome: Chrome,
    csrf: &'a str,
    project_id: &'a str,
    id: &'a str,
    name: &'a str,
    prefix: &'a str,
    action: &'a str,
    detail: &'static str,
    roll: bool,
    nonce: String,
}

pub async fn confirm(
    Manager(viewer): Manager,
    State(state): State<SharedState>,
    Path((id, action)): Path<(String, String)>,
) -> PageResult {
    let key = key_of(&state, &viewer, &id).await?;
    let (title, detail, roll) = match action.as_str() {
        "revoke" => (
            "Revoke API key",
            "Requests with this key will be refused at once (401 key_revoked). This cannot be undone.",
            false,
        ),
        "roll" => (
            "Roll API key",
            "A new key with the same settings is created and shown once; the old key stops working after the grace period.",
            true,
        ),
        _ => return Err(ApiError::not_found("page").into()),
    };
    let page = ConfirmPage {
        chrome: viewer.chrome("/keys", title),
        csrf: viewer.csrf(),
        project_id: &viewer.project.id,
        id: &key.id,
        name: &key.settings.name,
        prefix: &key.prefix,
        action: &action,
        detail,
        roll,
        nonce: form_nonce(),
    };
    Ok(render(StatusCode::OK, &page))
}

pub async fn act(
    State(state): State<SharedState>,
    Path((id, action)): Path<(String, String)>,
    form: ManagerForm,
) -> PageResult {
    let viewer = &form.viewer;
    let key = key_of(&state, viewer, &id).await?;
    let authority = operator_authority(&state, viewer).await?;
    let ctx = form.ctx(&state);
    match action.as_str() {
        "revoke" => {
            key_ops::revoke_key(&ctx, viewer.workspace_id(), &key, authority).await?;
            let to = format!("/keys?project={}&done=revoked", viewer.project.id);
            Ok(Redirect::to(&to).into_response())
        }
        "roll" => {
            let grace = form
                .field("grace")
                .parse::<i64>()
                .unwrap_or(0)
                .clamp(0, key_ops::MAX_ROLL_GRACE_SECONDS);
            let nonce = form.field("form_nonce");
            if let Err(already) = one_time(&state, viewer, nonce).await? {
                return Ok(already);
            }
            match key_ops::roll_key(&ctx, &viewer.project, &key, grace, authority).await {
                Ok(issued) => {
                    state.store.finish_form(nonce, Some(&issued.key.id)).await?;
                    Ok(reveal(
                        viewer,
                        &issued.key,
                        &issued.secret,
                        form.origin.as_deref(),
                    ))
                }
                Err(e) => {
                    state.store.finish_form(nonce, None).await?;
                    Err(e.into())
                }
            }
        }
        _ => Err(ApiError::not_found("page").into()),
    }
}
