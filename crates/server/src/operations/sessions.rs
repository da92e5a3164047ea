//! Dashboard sessions: signing in (a new session, audited as
//! `operator.signed_in` in each of the operator's workspaces) and out.

use keyflow_core::keys::{KeyDigest, random_base62};
use keyflow_store::{Actor, AuditAction, AuditTarget, Operator, Session, Store};
use serde_json::json;

use super::Ctx;
use super::error::{OpError, OpResult};

/// A session just created: the id for the cookie (only its SHA-256 is
/// stored) and the stored row.
pub struct NewSession {
    pub id: String,
    pub session: Session,
}

/// Starts a session for `operator`, who signed in from `ctx.ip`; the
/// session `replaced` (the browser's previous one, by id) ends first.
pub async fn sign_in(
    ctx: &Ctx<'_>,
    operator: &Operator,
    replaced: Option<&str>,
) -> OpResult<NewSession> {
    if let Some(old) = replaced {
        sign_out(ctx.store, old).await?;
    }
    let id = random_base62(32).map_err(|e| OpError::internal("session id", &e))?;
    let csrf = random_base62(32).map_err(|e| OpError::internal("csrf token", &e))?;
    let session = Session {
        id_hash: KeyDigest::of(&id).to_hex(),
        operator_id: operator.id.clone(),
        csrf_token: csrf,
        created_at: ctx.now,
        last_seen_at: ctx.now,
    };
    let target = AuditTarget {
        kind: "operator".into(),
        id: Some(operator.id.clone()),
        name: Some(operator.email.clone()),
    };
    let entries: Vec<_> = ctx
        .store
        .list_memberships(&operator.id)
        .await?
        .iter()
        .map(|m| {
            let action = AuditAction::OperatorSignedIn;
            ctx.audit(&m.workspace_id, None, action, target.clone(), json!({}))
        })
        .collect();
    ctx.store.create_session(&session, &entries).await?;
    Ok(NewSession { id, session })
}

/// Ends the session whose cookie value is `id` (nothing if there is none).
pub async fn sign_out(store: &dyn Store, id: &str) -> OpResult<()> {
    store.delete_session(&KeyDigest::of(id).to_hex()).await?;
    Ok(())
}

/// The actor a signed-in operator acts as.
pub fn operator_actor(operator: &Operator) -> Actor {
    Actor::Operator {
        id: operator.id.clone(),
        email: operator.email.clone(),
    }
}
