//! Access to the Metrics API (SPEC §4). `POST /v1/metrics/token` exchanges the
//! project's metrics credential (`Bearer mk_…` and its client secret) for a
//! short-lived access token ([`crate::metrics_token`]); the metric routes
//! take that token ([`require_token`]). Server-to-server only: a browser's
//! request (one with `Origin`) is refused. Both check, in SPEC §2's order,
//! the workspace's plan, the credential's IP allow-list and the project's
//! `metrics` rate limit, and answer with the rate-limit headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyflow_core::keys::parse_key;
use keyflow_core::{ErrorCode, GcraDecision, IpAllowList, KeyType, RateLimit};
use keyflow_store::MetricsCredential;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::auth::{
    Failure, client_ip, effective_quota, failures_exhausted, note_failure, presented_key,
};
use crate::error::{ApiError, ApiResult};
use crate::limits::{Category, write_headers};
use crate::metrics_token;
use crate::state::SharedState;

/// A credential as the metrics pipeline needs it, cached for a few seconds.
#[derive(Debug)]
pub struct CachedCredential {
    pub credential: MetricsCredential,
    pub workspace_id: String,
    pub allowlist: IpAllowList,
}

/// A request the metrics pipeline let through.
#[derive(Clone, Debug)]
pub struct MetricsCaller {
    pub credential: Arc<CachedCredential>,
}

impl MetricsCaller {
    pub fn project_id(&self) -> &str {
        &self.credential.credential.project_id
    }
}

/// The credential with this id (cached); `None` if there is none. A lookup
/// that must reach the database is refused once `ip` has used up its failed
/// guesses (429), as for keys: cached, genuine credentials keep working.
async fn credential(
    state: &SharedState,
    id: &str,
    ip: Option<IpAddr>,
) -> ApiResult<Option<Arc<CachedCredential>>> {
    if let Some(found) = state.cache.credential(id) {
        return Ok(Some(found));
    }
    let now = state.now_ms();
    if failures_exhausted(state, Failure::MetricsToken, ip, now) {
        return Err(crate::auth::too_many_failures(
            state,
            Failure::MetricsToken,
            ip,
            now,
        ));
    }
    let Some((credential, workspace_id)) = state.store.credential_for_auth(id).await? else {
        return Ok(None);
    };
    let cached = Arc::new(CachedCredential {
        allowlist: IpAllowList::from_rules(&credential.ip_allowlist),
        credential,
        workspace_id,
    });
    state
        .cache
        .insert_credential(id.to_string(), cached.clone());
    Ok(Some(cached))
}

/// The checks after authentication: plan, IP allow-list, rate limit (which
/// is spent only when the others pass). Returns the refusal, if any, and
/// what the rate-limit headers report.
async fn admit(
    state: &SharedState,
    credential: &CachedCredential,
    ip: Option<IpAddr>,
    now: i64,
) -> (Result<(), ApiError>, RateLimit, GcraDecision) {
    // Per project, so a rotation (a new credential id) starts no new quota.
    let project_id = &credential.credential.project_id;
    let bucket = format!("{project_id}:{}", Category::Metrics.as_str());
    let plan = match state.plan_of(&credential.workspace_id).await {
        Ok(Some(plan)) => plan,
        Ok(None) => keyflow_core::Plan::Free,
        Err(e) => {
            let quota = state.config.default_rate_limit;
            let decision = state.limiter.check(&bucket, quota, now, false).await;
            return (Err(e.into()), quota, decision);
        }
    };
    let project_limit = match state.project_rate_limit(project_id).await {
        Ok(limit) => limit,
        Err(e) => {
            let quota = state.config.default_rate_limit;
            let decision = state.limiter.check(&bucket, quota, now, false).await;
            return (Err(e.into()), quota, decision);
        }
    };
    let quota = effective_quota(None, project_limit, state.config.plan_rate_limit(plan));
    let refusal = crate::auth::plan_and_address(
        plan,
        &credential.allowlist,
        ip,
        "The Metrics API",
        "the metrics credential's",
    );
    if let Some(refusal) = refusal {
        state.prometheus.count_auth_rejection(refusal.code);
        let decision = state.limiter.check(&bucket, quota, now, false).await;
        return (Err(refusal), quota, decision);
    }
    let decision = state.limiter.check(&bucket, quota, now, true).await;
    if !decision.allowed {
        state
            .prometheus
            .count_rate_limited(crate::limits::Category::Metrics);
        let limited = crate::auth::rate_limited(&quota, decision.retry_after_seconds());
        return (Err(limited), quota, decision);
    }
    // Last use, at most one write a minute per credential.
    if state
        .cache
        .note_credential_use(&credential.credential.id, now)
    {
        let (store, id) = (state.store.clone(), credential.credential.id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.mark_credential_used(&id, now).await {
                tracing::warn!(error = %e, "could not record the metrics credential's last use");
            }
        });
    }
    (Ok(()), quota, decision)
}

fn with_headers(
    mut response: Response,
    quota: RateLimit,
    decision: &GcraDecision,
    now: i64,
) -> Response {
    let limited = response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS;
    write_headers(
        response.headers_mut(),
        Category::Metrics,
        quota,
        decision,
        now,
        limited,
    );
    response
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The client secret shown when the credential was created or rotated.
    #[schema(required = true, nullable = false, min_length = 1)]
    client_secret: Option<String>,
    /// Lifetime in seconds, 60 to 3600 (default 900).
    #[schema(minimum = 60, maximum = 3600)]
    expires_in: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    access_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the token stops working.
    expires_in: i64,
}

/// `403 insecure_key_usage` for a request a browser sent (SPEC §4: server to
/// server only), like a secret key's.
fn refuse_browsers(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(header::ORIGIN) {
        return Err(ApiError::new(
            ErrorCode::InsecureKeyUsage,
            "The Metrics API is server-to-server: never use the metrics credential or its tokens from a browser.",
        ));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/metrics/token",
    tag = "metrics",
    summary = "Exchange the metrics credential for an access token",
    description = "`Authorization: Bearer mk_…` (the credential id) and the client secret in the \
                   body. The token works on every instance until it expires or the credential is \
                   rotated. Checked like a key: plan, the credential's IP allow-list, the \
                   project's `metrics` rate limit. Server-to-server only (a request with `Origin` \
                   is refused).",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "An access token", body = TokenView),
        (status = 401, description = "Missing or unknown credential id, or wrong client secret", body = crate::error::ErrorBody),
        (status = 403, description = "Plan, IP allow-list or browser origin refused", body = crate::error::ErrorBody),
        super::openapi::Invalid,
        (status = 429, description = "Rate limited (see Retry-After)", body = crate::error::ErrorBody),
    ),
    security(("metrics_credential" = []))
)]
pub async fn exchange(
    State(state): State<SharedState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    crate::json::JsonBody(request): crate::json::JsonBody<TokenRequest>,
) -> Response {
    if let Err(refused) = refuse_browsers(&headers) {
        return refused.into_response();
    }
    // The body is read (by the extractor) and checked before the credential,
    // so its errors say nothing about whether an id exists, and cost no quota.
    let ttl = request
        .expires_in
        .unwrap_or(metrics_token::DEFAULT_TTL_SECS);
    if !(metrics_token::MIN_TTL_SECS..=metrics_token::MAX_TTL_SECS).contains(&ttl) {
        return ApiError::field(
            "expires_in",
            format!(
                "must be {} to {} seconds",
                metrics_token::MIN_TTL_SECS,
                metrics_token::MAX_TTL_SECS
            ),
        )
        .into_response();
    }
    let peer = extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let ip = client_ip(&state, peer, &headers);
    let now = state.now_ms();
    let Some(presented) = presented_key(&headers, false) else {
        return ApiError::new(
            ErrorCode::MissingApiKey,
            "Send the metrics credential id as `Authorization: Bearer mk_…`.",
        )
        .into_response();
    };
    let refuse = |state: &SharedState| {
        let invalid = ApiError::new(
            ErrorCode::InvalidApiKey,
            "The metrics credential id or client secret is not valid.",
        );
        note_failure(state, Failure::MetricsToken, ip, invalid).into_response()
    };
    if !parse_key(&presented).is_ok_and(|k| k.key_type == KeyType::Metrics) {
        return refuse(&state);
    }
    let found = match credential(&state, &presented, ip).await {
        Ok(Some(found)) => found,
        Ok(None) => return refuse(&state),
        Err(e) => return e.into_response(),
    };
    let secret = request.client_secret.unwrap_or_default();
    let digest = keyflow_core::KeyDigest::of(&secret);
    if !bool::from(digest.0.ct_eq(&found.credential.secret_digest.0)) {
        return refuse(&state);
    }
    let (admitted, quota, decision) = admit(&state, &found, ip, now).await;
    let answer = match admitted {
        Ok(()) => issue(&state, &found.credential, ttl, now).await,
        Err(refusal) => Err(refusal),
    };
    let response = answer.unwrap_or_else(IntoResponse::into_response);
    with_headers(response, quota, &decision, now)
}

/// Mints a token for `credential`, stores its digest, and answers with it.
async fn issue(
    state: &SharedState,
    credential: &MetricsCredential,
    ttl: i64,
    now: i64,
) -> ApiResult<Response> {
    let (token, digest) = metrics_token::mint()
        .ok_or_else(|| ApiError::internal("access token", &"the random source failed"))?;
    let expires_at = now + ttl * 1000;
    state
        .store
        .put_metrics_token(
            &digest,
            &credential.id,
            &credential.project_id,
            expires_at,
            now,
        )
        .await?;
    state
        .cache
        .insert_token(digest, credential.id.clone(), expires_at);
    Ok(super::no_store(
        Json(TokenView {
            access_token: token,
            token_type: "Bearer",
            expires_in: ttl,
        })
        .into_response(),
    ))
}

/// The pipeline of the metric routes: the access token, then [`admit`].
pub async fn require_token(
    State(state): State<SharedState>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Err(refused) = refuse_browsers(req.headers()) {
        return refused.into_response();
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = client_ip(&state, peer, req.headers());
    let now = state.now_ms();
    let Some(presented) = presented_key(req.headers(), false) else {
        return ApiError::new(
            ErrorCode::MissingApiKey,
            "Send an access token from POST /v1/metrics/token as `Authorization: Bearer <token>`.",
        )
        .into_response();
    };
    let invalid = || ApiError::new(ErrorCode::InvalidApiKey, "The access token is not valid.");
    let Some(digest) = metrics_token::digest_of(&presented) else {
        return note_failure(&state, Failure::MetricsToken, ip, invalid()).into_response();
    };
    let (credential_id, expires_at) = match state.cache.token(&digest) {
        Some(known) => known,
        None => {
            if failures_exhausted(&state, Failure::MetricsToken, ip, now) {
                return crate::auth::too_many_failures(&state, Failure::MetricsToken, ip, now)
                    .into_response();
            }
            match state.store.metrics_token(&digest).await {
                Ok(Some((id, expires_at))) => {
                    state.cache.insert_token(digest, id.clone(), expires_at);
                    (id, expires_at)
                }
                Ok(None) => {
                    return note_failure(&state, Failure::MetricsToken, ip, invalid())
                        .into_response();
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    };
    // A genuine token past its time, or of a rotated-away credential, is
    // not a guess: refused without counting against the address.
    if expires_at <= now {
        return ApiError::new(
            ErrorCode::KeyExpired,
            "The access token has expired; exchange the credential for a new one.",
        )
        .into_response();
    }
    let found = match credential(&state, &credential_id, ip).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return ApiError::new(
                ErrorCode::KeyRevoked,
                "The metrics credential of this access token was rotated; exchange the new one.",
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    let (admitted, quota, decision) = admit(&state, &found, ip, now).await;
    let response = match admitted {
        Ok(()) => {
            req.extensions_mut()
                .insert(MetricsCaller { credential: found });
            next.run(req).await
        }
        Err(refusal) => refusal.into_response(),
    };
    with_headers(response, quota, &decision, now)
}
