//! The change bus: after a change is committed, the operation that made it
//! publishes a typed [`Change`]; listeners react. Today one listener drops
//! this instance's cached copies (keys, plans, project limits); the Redis
//! fan-out to other instances (SPEC §11) and workflow triggers (SPEC §10)
//! subscribe here too, so nothing invalidates caches by hand.
//!
//! Publishing happens after the commit and only when it succeeded: a change
//! that was rolled back is never announced.

use std::sync::{Arc, RwLock};

use keyflow_core::KeyDigest;

/// A committed change other parts of the system may need to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was created (its digest may be cached as "unknown").
    KeyCreated { digest: KeyDigest },
    /// A key's settings changed.
    KeyUpdated { digest: KeyDigest },
    /// A key was revoked.
    KeyRevoked { digest: KeyDigest },
    /// A key was rolled: `old` now expires, `new` was created.
    KeyRolled { old: KeyDigest, new: KeyDigest },
    /// A workspace's plan changed.
    PlanChanged { workspace_id: String },
    /// A project's settings (rate limit, cache TTL) changed.
    ProjectSettingsChanged { project_id: String },
    /// A project's metrics credential was created, rotated or changed.
    MetricsCredentialChanged { project_id: String },
    /// A contact was created through the API, Segment `identify` or a
    /// subscriber signup (contacts that event tracking creates are not
    /// announced, as they are not audited).
    ContactCreated {
        project_id: String,
        contact_id: String,
    },
    /// A contact's fields, properties or subscription changed.
    ContactUpdated {
        project_id: String,
        contact_id: String,
    },
    ContactDeleted {
        project_id: String,
        contact_id: String,
    },
    /// A contact subscribed or unsubscribed (published before the
    /// `ContactCreated`/`ContactUpdated` of the same write).
    SubscriptionChanged {
        project_id: String,
        contact_id: String,
        subscribed: bool,
    },
    /// An operator joined a workspace, changed role in it, or left it.
    MembershipChanged {
        workspace_id: String,
        operator_id: String,
    },
}

type Listener = Box<dyn Fn(&Change) + Send + Sync>;

/// Where operations announce committed changes.
pub trait ChangeBus: Send + Sync {
    fn publish(&self, change: Change);
}

/// The in-process bus: calls every subscriber, in subscription order, on the
/// publishing task (listeners must be quick and must not block).
#[derive(Default)]
pub struct LocalChangeBus {
    listeners: RwLock<Vec<Listener>>,
}

impl LocalChangeBus {
    pub fn subscribe(&self, listener: impl Fn(&Change) + Send + Sync + 'static) {
        self.listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(listener));
    }
}

impl ChangeBus for LocalChangeBus {
    fn publish(&self, change: Change) {
        for listener in self
            .listeners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            listener(&change);
        }
    }
}

/// For processes without caches to keep true (the CLI): changes go nowhere.
/// A running server sees them within its cache lifetimes (`key_cache_ttl_secs`,
/// 1 s for plans and project settings).
pub struct NoListeners;

impl ChangeBus for NoListeners {
    fn publish(&self, _change: Change) {}
}

/// The listener that keeps this instance's caches true.
pub fn invalidate_caches(cache: Arc<crate::state::KeyCache>) -> impl Fn(&Change) + Send + Sync {
    move |change| match change {
        Change::KeyCreated { digest }
        | Change::KeyUpdated { digest }
        | Change::KeyRevoked { digest } => cache.invalidate(digest),
        Change::KeyRolled { old, new } => {
            cache.invalidate(old);
            cache.invalidate(new);
        }
        Change::PlanChanged { workspace_id } => cache.invalidate_plan(workspace_id),
        Change::ProjectSettingsChanged { project_id } => cache.invalidate_project(project_id),
        Change::MetricsCredentialChanged { .. } => cache.invalidate_credentials(),
        Change::ContactCreated { .. }
        | Change::ContactUpdated { .. }
        | Change::ContactDeleted { .. }
        | Change::SubscriptionChanged { .. }
        | Change::MembershipChanged { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_subscriber_sees_each_change_once_in_order() {
        let bus = LocalChangeBus::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for tag in ["a", "b"] {
            let seen = seen.clone();
            bus.subscribe(move |c| seen.lock().unwrap().push((tag, c.clone())));
        }
        let change = Change::PlanChanged {
            workspace_id: "w".into(),
        };
        bus.publish(change.clone());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("a", change.clone()), ("b", change)]
        );
    }
}
