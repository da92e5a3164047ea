//! last_used_at / last-used IP, aggregated in memory and flushed in one batch
//! every few seconds (and on shutdown): never a database write per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use keyflow_core::clock::UnixMillis;
use keyflow_store::{DailyUsage, KeyUsage, Store};

const DAY_MS: i64 = 86_400_000;

#[derive(Default)]
pub struct UsageTracker {
    pending: Mutex<HashMap<String, (UnixMillis, Option<IpAddr>)>>,
    /// Requests per key and UTC day not yet added to the store. Keyed by key
    /// first so counting a request for a known key allocates nothing.
    counts: Mutex<HashMap<String, HashMap<i64, DailyUsage>>>,
}

impl UsageTracker {
    pub fn record(&self, key_id: &str, at: UnixMillis, ip: Option<IpAddr>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(key_id) {
            Some(entry) if entry.0 <= at => *entry = (at, ip),
            Some(_) => {}
            None => {
                pending.insert(key_id.to_string(), (at, ip));
            }
        }
    }

    /// Counts one authenticated request of `key_id` with its response status.
    pub fn count(&self, key_id: &str, at: UnixMillis, status: u16) {
        let day = at.div_euclid(DAY_MS);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !counts.contains_key(key_id) {
            counts.insert(key_id.to_string(), HashMap::new());
        }
        let Some(per_day) = counts.get_mut(key_id) else {
            return;
        };
        let entry = per_day.entry(day).or_insert(DailyUsage {
            day,
            ..Default::default()
        });
        entry.requests += 1;
        if status >= 400 {
            entry.errors += 1;
        }
        if status == 429 {
            entry.rate_limited += 1;
        }
    }

    /// Unflushed counts of a key, for pages that show its usage now.
    pub fn pending_counts(&self, key_id: &str) -> Vec<DailyUsage> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts
            .get(key_id)
            .map(|days| days.values().copied().collect())
            .unwrap_or_default()
    }

    async fn flush_counts(&self, store: &dyn Store) -> Result<(), keyflow_store::StoreError> {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        if counts.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, DailyUsage)> = counts
            .iter()
            .flat_map(|(key, days)| days.values().map(move |u| (key.clone(), *u)))
            .collect();
        if let Err(e) = store.add_daily_usage(&rows).await {
            // Put them back: counts are added, so nothing is lost or doubled.
            let mut current = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (key, days) in counts {
                let per_day = current.entry(key).or_default();
                for (day, u) in days {
                    let entry = per_day.entry(day).or_insert(DailyUsage {
                        day,
                        ..Default::default()
                    });
                    entry.requests += u.requests;
                    entry.errors += u.errors;
                    entry.rate_limited += u.rate_limited;
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Not yet flushed use of a key, so responses are never staler than memory.
    pub fn pending(&self, key_id: &str) -> Option<(UnixMillis, Option<IpAddr>)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned()
    }

    /// Writes everything pending. On failure the data goes back into the map,
    /// so a database hiccup delays last-used data but never loses it.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, keyflow_store::StoreError> {
        self.flush_counts(store).await?;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(0);
        }
        let rows: Vec<KeyUsage> = batch
            .iter()
            .map(|(id, (at, ip))| KeyUsage {
                key_id: id.clone(),
                last_used_at: *at,
                ip: ip.map(|ip| ip.to_string()),
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
