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

/// A committed change other parts of the system may need to see. Its JSON
/// form crosses instances through Redis (`crate::redis_link`); a key appears
/// there only as its digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// A key was created (its digest may be cached as "unknown").
    KeyCreated {
        #[serde(with = "digest_hex")]
        digest: KeyDigest,
    },
    /// A key's settings changed.
    KeyUpdated {
        #[serde(with = "digest_hex")]
        digest: KeyDigest,
    },
    /// A key was revoked.
    KeyRevoked {
        #[serde(with = "digest_hex")]
        digest: KeyDigest,
    },
    /// A key was rolled: `old` now expires, `new` was created.
    KeyRolled {
        #[serde(with = "digest_hex")]
        old: KeyDigest,
        #[serde(with = "digest_hex")]
        new: KeyDigest,
    },
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
    /// A workflow was created, changed (definition, status, secret) or
    /// archived.
    WorkflowChanged {
        project_id: String,
        workflow_id: String,
    },
}

/// A key digest as 64 hex digits in a change's JSON form.
mod digest_hex {
    use keyflow_core::KeyDigest;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(digest: &KeyDigest, s: S) -> Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(64);
        for byte in digest.0 {
            hex.push_str(&format!("{byte:02x}"));
        }
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyDigest, D::Error> {
        let hex = <&str>::deserialize(d)?;
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(D::Error::custom("a key digest is 64 hex digits"));
        }
        let mut digest = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(D::Error::custom)?;
            digest[i] = u8::from_str_radix(text, 16).map_err(D::Error::custom)?;
        }
        Ok(KeyDigest(digest))
    }
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
    move |change| drop_cached(&cache, change)
}

/// Drops what `change` makes stale from `cache` (changes of this instance,
/// and of others through `crate::redis_link`).
pub fn drop_cached(cache: &crate::state::KeyCache, change: &Change) {
    match change {
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
        | Change::MembershipChanged { .. }
        | Change::WorkflowChanged { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn changes_cross_instances_as_json_and_back() {
        let changes = [
            Change::KeyRevoked {
                digest: KeyDigest([7; 32]),
            },
            Change::KeyRolled {
                old: KeyDigest([0; 32]),
                new: KeyDigest([255; 32]),
            },
            Change::PlanChanged {
                workspace_id: "w".into(),
            },
        ];
        for change in changes {
            let text = serde_json::to_string(&change).unwrap();
            assert_eq!(serde_json::from_str::<Change>(&text).unwrap(), change);
        }
        let text = serde_json::to_string(&Change::KeyRevoked {
            digest: KeyDigest([0xab; 32]),
        })
        .unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"type\":\"key_revoked\",\"digest\":\"{}\"}}",
                "ab".repeat(32)
            )
        );
        assert!(serde_json::from_str::<Change>(r#"{"type":"key_revoked","digest":"zz"}"#).is_err());
    }

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
