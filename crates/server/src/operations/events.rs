//! Event ingestion: every ingest endpoint (`/v1/events`, its batch form,
//! Segment's `track` and `batch`, the embed script) stores through here.

use keyflow_core::clock::UnixMillis;
use keyflow_core::events::NewEvent;
use keyflow_store::{EventOutcome, Store, StoreError};

use super::error::{OpError, OpResult};

/// Stores `events` durably (after their commit), resolving or creating
/// their contacts and honouring idempotency keys; all or nothing. `single`:
/// the request sent one event, not a batch, so a refused field is named
/// without its `events[0].` prefix.
pub async fn ingest(
    store: &dyn Store,
    project_id: &str,
    events: Vec<NewEvent>,
    single: bool,
    now: UnixMillis,
) -> OpResult<Vec<EventOutcome>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    match store.ingest_events(project_id, events, now).await {
        Ok(outcomes) => Ok(outcomes),
        Err(StoreError::Invalid(mut field)) if single => {
            if let Some(rest) = field.field.strip_prefix("events[0].") {
                field.field = rest.to_string();
            }
            Err(OpError::validation(vec![field]))
        }
        Err(e) => Err(e.into()),
    }
}
