//! Advancing one run (SPEC §10): the steps from its position on, each
//! saved as it is done, until the run waits, must retry a webhook later, or
//! is over. Steps run at least once and in order; the job's lease keeps any
//! other instance from advancing the same run meanwhile.

use keyflow_core::contacts::{ContactChanges, ContactLookup};
use keyflow_core::workflows::runs::{self, RunStatus, Side, StepPath, path_text};
use keyflow_core::workflows::{Facts, Step, WebhookMethod, WorkflowStatus, all_hold, templates};
use keyflow_store::{
    Actor, AuditAction, Contact, Job, JobNext, Progress, RunAttempt, RunStep, Workflow, WorkflowRun,
};
use serde_json::{Map, Value, json};

use super::delivery::{self, Attempt};
use crate::state::SharedState;

/// How long a claim holds a job: longer than one webhook attempt (15 s)
/// with room; extended at every saved step.
pub const LEASE_MS: i64 = 60_000;
/// Claims of one job that never finished before it is parked (its run
/// failed): a run that keeps crashing its worker is not retried forever.
pub const MAX_CLAIMS: i64 = 5;
/// Steps one claim takes at most before the job goes back to the queue.
const STEPS_PER_CLAIM: usize = 60;
/// A webhook call slower than this ends the claim (see the worker's
/// fairness): the run continues at its next claim.
const SLOW_CALL_MS: i64 = 1_000;
/// The most a webhook body, and each header value, may render to.
const MAX_RENDERED_BODY: usize = 256 * 1024;
const MAX_RENDERED_HEADER: usize = 1024;
/// The most `update_contact`'s properties may render to (the contact's own
/// limit is 32 KiB of JSON).
const MAX_RENDERED_PROPERTIES: usize = 32 * 1024;
/// How long a paused workflow's runs wait before looking again.
const PAUSED_RECHECK_MS: i64 = 30_000;

/// Advances the run of `job`; errors are logged, and the lease makes the
/// job come back later.
pub async fn advance(state: SharedState, worker: String, job: Job) {
    let done = match job.kind.as_str() {
        keyflow_store::EVENT_JOB => super::triggers::start_from_event(&state, &worker, &job).await,
        keyflow_store::CONTACT_JOB => {
            super::triggers::start_from_contact(&state, &worker, &job).await
        }
        _ => advance_run(&state, &worker, &job).await,
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, run_id = %job.subject_id, "workflow run could not advance; it will be tried again");
    }
}

async fn advance_run(state: &SharedState, worker: &str, job: &Job) -> anyhow::Result<()> {
    let claim = Claim { state, worker, job };
    let store = state.store.as_ref();
    let Some(mut run) = store.workflow_run(&job.project_id, &job.subject_id).await? else {
        store.drop_job(job, worker).await?;
        return Ok(());
    };
    if !run.status.is_active() {
        store.drop_job(job, worker).await?;
        return Ok(());
    }
    let workflow = store.workflow(&run.project_id, &run.workflow_id).await?;
    let definition = store
        .workflow_version(&run.workflow_id, run.version)
        .await?;
    let (Some(workflow), Some((_, steps))) = (workflow, definition) else {
        return claim
            .finish(&mut run, RunStatus::Failed, Some("the workflow is gone"))
            .await;
    };
    match workflow.status {
        WorkflowStatus::Archived => {
            return claim.finish(&mut run, RunStatus::Cancelled, None).await;
        }
        WorkflowStatus::Paused => {
            store
                .release_job(job, worker, state.now_ms() + PAUSED_RECHECK_MS)
                .await?;
            return Ok(());
        }
        _ => {}
    }
    if job.claims > MAX_CLAIMS {
        let why = format!("its worker stopped {MAX_CLAIMS} times while running it");
        return claim.finish(&mut run, RunStatus::Failed, Some(&why)).await;
    }
    let (recorded, _) = store.run_steps(&run.id).await?;
    let mut steps_done = 0;
    loop {
        steps_done += 1;
        if steps_done > STEPS_PER_CLAIM {
            let now = state.now_ms();
            claim.save(&run, &[], None, JobNext::At(now)).await?;
            return Ok(());
        }
        let Some(path) = run.position.clone() else {
            return claim.finish(&mut run, RunStatus::Completed, None).await;
        };
        // Paused or archived since the claim: hold (or end) the run at this
        // step (SPEC §10), not after its last one.
        if steps_done > 1 {
            match store
                .workflow(&run.project_id, &run.workflow_id)
                .await?
                .map(|w| w.status)
            {
                Some(WorkflowStatus::Paused) => {
                    let at = state.now_ms() + PAUSED_RECHECK_MS;
                    claim.save(&run, &[], None, JobNext::At(at)).await?;
                    return Ok(());
                }
                Some(WorkflowStatus::Archived) | None => {
                    return claim.finish(&mut run, RunStatus::Cancelled, None).await;
                }
                _ => {}
            }
        }
        let Some(step) = runs::step_at(&steps, &path) else {
            return claim
                .finish(
                    &mut run,
                    RunStatus::Failed,
                    Some("the step is missing from its version"),
                )
                .await;
        };
        let Some(contact) = store
            .get_contact(&run.project_id, &ContactLookup::Id(run.contact_id.clone()))
            .await?
        else {
            return claim
                .finish(
                    &mut run,
                    RunStatus::Cancelled,
                    Some("the contact was deleted"),
                )
                .await;
        };
        let facts = facts(&contact, &run.facts);
        let now = state.now_ms();
        let key = path_text(&path);
        let earlier = recorded.iter().find(|s| s.path == key);
        let mut record = RunStep {
            path: key.clone(),
            step_type: step_type(step).into(),
            status: "succeeded".into(),
            attempts: earlier.map_or(0, |s| s.attempts),
            next_attempt_at: None,
            started_at: earlier.map_or(now, |s| s.started_at),
            finished_at: Some(now),
        };
        match step {
            Step::Wait { seconds } => {
                if run.status != RunStatus::Waiting {
                    let until = now + i64::try_from(*seconds).unwrap_or(i64::MAX / 2) * 1000;
                    run.status = RunStatus::Waiting;
                    run.updated_at = now;
                    record.status = "waiting".into();
                    record.next_attempt_at = Some(until);
                    record.finished_at = None;
                    claim
                        .save(&run, &[record], None, JobNext::At(until))
                        .await?;
                    return Ok(());
                }
                // The wait is over (the job came back at its time).
                run.status = RunStatus::Running;
                move_on(&mut run, runs::after(&steps, &path), now);
            }
            Step::Branch { conditions, .. } => {
                let side = if all_hold(conditions, &facts) {
                    Side::Then
                } else {
                    Side::Else
                };
                move_on(&mut run, runs::into_branch(&steps, &path, side), now);
            }
            Step::Exit => move_on(&mut run, None, now),
            Step::Subscribe | Step::Unsubscribe | Step::UpdateContact { .. } => {
                if let Err(why) = change_contact(state, &workflow, &run, step, &facts).await? {
                    record.status = "failed".into();
                    run.error = Some(why);
                    run.status = RunStatus::Failed;
                    run.finished_at = Some(now);
                    run.updated_at = now;
                    claim.save(&run, &[record], None, JobNext::Done).await?;
                    return Ok(());
                }
                move_on(&mut run, runs::after(&steps, &path), now);
            }
            Step::Webhook { .. } => {
                record.attempts += 1;
                let attempt =
                    match call(state, &workflow, &run, &path, step, &contact, &facts).await {
                        Ok(attempt) => attempt,
                        Err(why) => {
                            // Nothing was sent, and trying again would not help.
                            record.status = "failed".into();
                            run.error = Some(why);
                            run.status = RunStatus::Failed;
                            run.finished_at = Some(now);
                            run.updated_at = now;
                            claim.save(&run, &[record], None, JobNext::Done).await?;
                            return Ok(());
                        }
                    };
                let log = RunAttempt {
                    path: key.clone(),
                    attempt: record.attempts,
                    at: now,
                    status_code: attempt.status.map(i64::from),
                    duration_ms: attempt.duration_ms,
                    response: attempt.excerpt.clone(),
                    error: attempt.error.clone(),
                };
                let now = state.now_ms();
                if attempt.succeeded() {
                    record.finished_at = Some(now);
                    move_on(&mut run, runs::after(&steps, &path), now);
                } else {
                    let jitter = rand_jitter();
                    let tries = u32::try_from(record.attempts).unwrap_or(u32::MAX);
                    let next = runs::retry_delay_ms(tries, jitter, attempt.retry_after_secs)
                        .filter(|_| attempt.status != Some(410));
                    record.status = "failed".into();
                    match next {
                        Some(delay) => {
                            let at = now + i64::try_from(delay).unwrap_or(i64::MAX / 2);
                            record.status = "retrying".into();
                            record.next_attempt_at = Some(at);
                            record.finished_at = None;
                            run.updated_at = now;
                            claim
                                .save(&run, &[record], Some(&log), JobNext::At(at))
                                .await?;
                        }
                        None => {
                            let why = match attempt.status {
                                Some(410) => "the webhook answered 410 Gone".to_string(),
                                _ => format!("the webhook failed {} times", record.attempts),
                            };
                            run.status = RunStatus::Failed;
                            run.error = Some(why);
                            run.updated_at = now;
                            run.finished_at = Some(now);
                            // The position stays: a retry resumes here.
                            claim
                                .save(&run, &[record], Some(&log), JobNext::Done)
                                .await?;
                        }
                    }
                    return Ok(());
                }
                // A slow receiver gives the worker back: other runs (other
                // projects') go first, and this one is claimed again.
                let next = if attempt.duration_ms > SLOW_CALL_MS {
                    JobNext::At(now)
                } else {
                    continuing(state)
                };
                claim.save(&run, &[record], Some(&log), next).await?;
                if matches!(next, JobNext::At(_)) {
                    return Ok(());
                }
                continue;
            }
        }
        claim.save(&run, &[record], None, continuing(state)).await?;
    }
}

fn continuing(state: &SharedState) -> JobNext {
    JobNext::Continue {
        lease_until: state.now_ms() + LEASE_MS,
    }
}

fn move_on(run: &mut WorkflowRun, next: Option<StepPath>, now: i64) {
    run.position = next;
    run.updated_at = now;
}

/// A claimed job, and what saving its progress needs.
struct Claim<'a> {
    state: &'a SharedState,
    worker: &'a str,
    job: &'a Job,
}

impl Claim<'_> {
    /// Saves progress; an error when the lease was lost (another worker
    /// has the job now, and this one must stop).
    async fn save(
        &self,
        run: &WorkflowRun,
        steps: &[RunStep],
        attempt: Option<&RunAttempt>,
        next: JobNext,
    ) -> anyhow::Result<()> {
        let progress = Progress {
            run,
            steps,
            attempt,
            job: next,
        };
        if self
            .state
            .store
            .save_progress(self.job, self.worker, progress)
            .await?
        {
            Ok(())
        } else {
            anyhow::bail!("the job's lease was lost")
        }
    }

    /// Ends the run as `status` (a failed run keeps its position, for a
    /// retry) and removes its job.
    async fn finish(
        &self,
        run: &mut WorkflowRun,
        status: RunStatus,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let now = self.state.now_ms();
        run.status = status;
        run.error = error.map(str::to_string);
        if status != RunStatus::Failed {
            run.position = None;
        }
        run.updated_at = now;
        run.finished_at = Some(now);
        self.save(run, &[], None, JobNext::Done).await
    }
}

fn step_type(step: &Step) -> &'static str {
    match step {
        Step::Webhook { .. } => "webhook",
        Step::UpdateContact { .. } => "update_contact",
        Step::Subscribe => "subscribe",
        Step::Unsubscribe => "unsubscribe",
        Step::Wait { .. } => "wait",
        Step::Branch { .. } => "branch",
        Step::Exit => "exit",
    }
}

/// What conditions and templates read: the contact now, and what the
/// trigger knew.
pub fn facts(contact: &Contact, known: &Value) -> Facts {
    let object = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
    Facts {
        contact_email: contact.fields.email.clone(),
        contact_external_id: contact.fields.external_id.clone(),
        contact_subscribed: contact.fields.subscribed,
        contact_properties: contact.fields.properties.clone(),
        event_name: known
            .pointer("/event/name")
            .and_then(Value::as_str)
            .map(str::to_string),
        event_properties: object(known.pointer("/event/properties")),
        variables: object(known.get("variables")),
    }
}

/// `subscribe`, `unsubscribe`, `update_contact`: through the same
/// operation as the API, audited with the workflow as actor.
/// `Ok(Err(why))`: the step cannot be done (its properties would be too
/// large or invalid); trying again would not help.
async fn change_contact(
    state: &SharedState,
    workflow: &Workflow,
    run: &WorkflowRun,
    step: &Step,
    facts: &Facts,
) -> anyhow::Result<Result<(), String>> {
    let mut changes = ContactChanges::default();
    match step {
        Step::Subscribe => changes.subscribed = Some(true),
        Step::Unsubscribe => changes.subscribed = Some(false),
        Step::UpdateContact { properties } => {
            let mut budget = MAX_RENDERED_PROPERTIES;
            let Some(rendered) = templates::render(
                &Value::Object(properties.clone()),
                facts,
                &run.id,
                &mut budget,
            ) else {
                return Ok(Err(format!(
                    "update_contact: the properties would render to more than {} KiB",
                    MAX_RENDERED_PROPERTIES / 1024
                )));
            };
            changes.properties = rendered.as_object().cloned().unwrap_or_default();
            if let Err(e) =
                keyflow_core::json_limits::check_properties("properties", &changes.properties)
            {
                return Ok(Err(format!("update_contact: {}", e.message)));
            }
        }
        _ => return Ok(Ok(())),
    }
    let Some(project) = state.store.get_project(&run.project_id).await? else {
        anyhow::bail!("the project is gone");
    };
    let actor = Actor::Workflow {
        id: workflow.id.clone(),
        name: workflow.name.clone(),
    };
    let mut ctx = state.ctx(actor, None, state.now_ms());
    // The runs this change starts are one level deeper (loop guard).
    ctx.workflow_depth = run.depth + 1;
    crate::operations::contacts::update_contact(
        &ctx,
        &project.workspace_id,
        &run.project_id,
        &ContactLookup::Id(run.contact_id.clone()),
        &changes,
        AuditAction::ContactUpdated,
    )
    .await?;
    Ok(Ok(()))
}

/// One attempt at a webhook step: the body (as written, templated, or the
/// default), the headers, the signature. `Err`: the request cannot be
/// built (a template renders too large); nothing was sent.
async fn call(
    state: &SharedState,
    workflow: &Workflow,
    run: &WorkflowRun,
    path: &StepPath,
    step: &Step,
    contact: &Contact,
    facts: &Facts,
) -> Result<Attempt, String> {
    let Step::Webhook {
        url,
        method,
        headers,
        body,
    } = step
    else {
        return Ok(not_sent("not a webhook step"));
    };
    let too_large = |what: &str, limit: usize| {
        format!(
            "the webhook's {what} would render to more than {} KiB",
            limit / 1024
        )
    };
    let body = match body {
        Some(body) => {
            let mut budget = MAX_RENDERED_BODY;
            templates::render(body, facts, &run.id, &mut budget)
                .ok_or_else(|| too_large("body", MAX_RENDERED_BODY))?
        }
        None => json!({
            "workflow": {"id": workflow.id, "name": workflow.name, "version": run.version},
            "run_id": run.id,
            "contact": contact_json(contact),
            "trigger": run.trigger,
        }),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    // Stable for this step of this run, so a receiver can drop repeats.
    let id = webhook_id(&run.id, path);
    let timestamp = state.now_ms() / 1000;
    let mut secrets = vec![workflow.signing_secret.as_str()];
    if let Some((previous, until)) = &workflow.previous_signing_secret
        && *until > state.now_ms()
    {
        secrets.push(previous);
    }
    let mut all_headers = Vec::new();
    for (name, value) in headers {
        let mut budget = MAX_RENDERED_HEADER;
        let value = templates::render_text(value, facts, &run.id, &mut budget)
            .ok_or_else(|| too_large(&format!("header {name}"), MAX_RENDERED_HEADER))?;
        all_headers.push((name.clone(), value));
    }
    all_headers.push(("webhook-id".into(), id.clone()));
    all_headers.push(("webhook-timestamp".into(), timestamp.to_string()));
    all_headers.push((
        "webhook-signature".into(),
        delivery::signature(&secrets, &id, timestamp, &body),
    ));
    let Some(tls) = state.webhook_tls.as_ref() else {
        return Ok(not_sent(
            "webhooks cannot be sent: TLS could not be set up on this instance",
        ));
    };
    let request = delivery::Request {
        url,
        method: match method {
            WebhookMethod::Post => hyper::Method::POST,
            WebhookMethod::Put => hyper::Method::PUT,
            WebhookMethod::Patch => hyper::Method::PATCH,
        },
        headers: &all_headers,
        body,
    };
    Ok(delivery::send(request, &state.config.webhook_allow_private_networks, tls).await)
}

fn not_sent(why: &str) -> Attempt {
    Attempt {
        status: None,
        duration_ms: 0,
        excerpt: None,
        error: Some(why.into()),
        retry_after_secs: None,
    }
}

/// `msg_` and 32 hex digits derived from the run and the step's path.
pub fn webhook_id(run_id: &str, path: &[runs::Part]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{run_id}/{}", path_text(path)).as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

fn contact_json(contact: &Contact) -> Value {
    let f = &contact.fields;
    let mut map = Map::new();
    map.insert("id".into(), json!(contact.id));
    map.insert("email".into(), json!(f.email));
    map.insert("external_id".into(), json!(f.external_id));
    map.insert("first_name".into(), json!(f.first_name));
    map.insert("last_name".into(), json!(f.last_name));
    map.insert("subscribed".into(), json!(f.subscribed));
    map.insert("properties".into(), Value::Object(f.properties.clone()));
    Value::Object(map)
}

/// A number in [-1, 1] for the retry jitter.
fn rand_jitter() -> f64 {
    let mut byte = [0u8; 2];
    if getrandom::fill(&mut byte).is_err() {
        return 0.0;
    }
    f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX) * 2.0 - 1.0
}
