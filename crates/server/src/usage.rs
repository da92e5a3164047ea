//! last_used_at / last-used IP, aggregated in memory and flushed in one batch
//! every few seconds (and on shutdown): never a database write per request.

use std::collections::HashMap;
use std::sync::Mutex;

use keyflow_core::clock::UnixMillis;
use keyflow_store::{KeyUsage, Store};

#[derive(Default)]
pub struct UsageTracker {
    pending: Mutex<HashMap<String, (UnixMillis, Option<String>)>>,
}

impl UsageTracker {
    pub fn record(&self, key_id: &str, at: UnixMillis, ip: Option<String>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(key_id) {
            Some(entry) if entry.0 <= at => *entry = (at, ip),
            Some(_) => {}
            None => {
                pending.insert(key_id.to_string(), (at, ip));
            }
        }
    }

    /// Not yet flushed use of a key, so responses are never staler than memory.
    pub fn pending(&self, key_id: &str) -> Option<(UnixMillis, Option<String>)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned()
    }

    /// Writes everything pending. On failure the data goes back into the map,
    /// so a database hiccup delays last-used data but never loses it.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, keyflow_store::StoreError> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(0);
        }
        let rows: Vec<KeyUsage> = batch
            .iter()
            .map(|(id, (at, ip))| KeyUsage {
                key_id: id.clone(),
                last_used_at: *at,
                ip: ip.clone(),
            })
            .collect();
        match store.record_key_usage(&rows).await {
            Ok(()) => Ok(rows.len()),
            Err(e) => {
                for (id, (at, ip)) in batch {
                    self.record(&id, at, ip);
                }
                Err(e)
            }
        }
    }
}
