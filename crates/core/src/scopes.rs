//! Scopes and which key types may hold them (SPEC §2 "Types and scopes").

use std::fmt;

use crate::keys::KeyType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    ContactsRead,
    ContactsWrite,
    EventsRead,
    EventsWrite,
    SubscribersRead,
    SubscribersWrite,
    KeysRead,
    KeysWrite,
    AuditRead,
    WorkflowsRead,
    WorkflowsWrite,
}

impl Scope {
    pub const ALL: [Scope; 11] = [
        Scope::ContactsRead,
        Scope::ContactsWrite,
        Scope::EventsRead,
        Scope::EventsWrite,
        Scope::SubscribersRead,
        Scope::SubscribersWrite,
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::AuditRead,
        Scope::WorkflowsRead,
        Scope::WorkflowsWrite,
    ];

    /// The wire name, e.g. `contacts:read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ContactsRead => "contacts:read",
            Scope::ContactsWrite => "contacts:write",
            Scope::EventsRead => "events:read",
            Scope::EventsWrite => "events:write",
            Scope::SubscribersRead => "subscribers:read",
            Scope::SubscribersWrite => "subscribers:write",
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::AuditRead => "audit:read",
            Scope::WorkflowsRead => "workflows:read",
            Scope::WorkflowsWrite => "workflows:write",
        }
    }

    /// A sentence fragment for people ("read contacts").
    pub fn description(self) -> &'static str {
        match self {
            Scope::ContactsRead => "read contacts",
            Scope::ContactsWrite => "create, update and delete contacts",
            Scope::EventsRead => "read events",
            Scope::EventsWrite => "track events",
            Scope::SubscribersRead => "list subscribers",
            Scope::SubscribersWrite => "sign up subscribers",
            Scope::KeysRead => "list API keys",
            Scope::KeysWrite => "create, change, roll and revoke API keys",
            Scope::AuditRead => "read the activity log",
            Scope::WorkflowsRead => "list workflows and their runs",
            Scope::WorkflowsWrite => "create, change and trigger workflows, cancel and retry runs",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes as a bit set: checking a scope on the hot path is one AND.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(u16);

impl ScopeSet {
    pub const EMPTY: ScopeSet = ScopeSet(0);

    pub fn of(scopes: &[Scope]) -> Self {
        scopes.iter().fold(Self::EMPTY, |set, s| set.with(*s))
    }

    pub fn with(self, scope: Scope) -> Self {
        Self(self.0 | scope.bit())
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_subset_of(self, other: ScopeSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn intersect(self, other: ScopeSet) -> Self {
        Self(self.0 & other.0)
    }

    /// Scopes in `self` missing from `other`.
    pub fn minus(self, other: ScopeSet) -> Self {
        Self(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn to_strings(self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_string()).collect()
    }

    /// Parses wire names; on failure returns the offending name.
    pub fn parse_all<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, &'a str> {
        names.into_iter().try_fold(Self::EMPTY, |set, name| {
            Scope::parse(name).map(|s| set.with(s)).ok_or(name)
        })
    }

    /// What a key of this type may ever hold.
    pub fn allowed_for(key_type: KeyType) -> Self {
        match key_type {
            KeyType::Secret => Self::of(&Scope::ALL),
            KeyType::Client => Self::of(&[
                Scope::EventsWrite,
                Scope::ContactsWrite,
                Scope::SubscribersWrite,
            ]),
            KeyType::ReadOnly => Self::of(&[
                Scope::ContactsRead,
                Scope::EventsRead,
                Scope::SubscribersRead,
                Scope::AuditRead,
                Scope::WorkflowsRead,
            ]),
            KeyType::Metrics => Self::EMPTY,
        }
    }

    /// What a key of this type gets when the request names no scopes.
    pub fn default_for(key_type: KeyType) -> Self {
        match key_type {
            KeyType::Client => Self::of(&[Scope::EventsWrite]),
            other => Self::allowed_for(other),
        }
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(Scope::as_str))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_rules_match_the_spec() {
        let client = ScopeSet::allowed_for(KeyType::Client);
        assert!(client.contains(Scope::EventsWrite));
        assert!(!client.contains(Scope::KeysWrite));
        assert!(!client.contains(Scope::ContactsRead));
        let ro = ScopeSet::allowed_for(KeyType::ReadOnly);
        assert!(!ro.contains(Scope::KeysRead));
        assert!(ro.iter().all(|s| s.as_str().ends_with(":read")));
        assert_eq!(
            ScopeSet::default_for(KeyType::Client),
            ScopeSet::of(&[Scope::EventsWrite])
        );
        assert_eq!(ScopeSet::default_for(KeyType::Secret).iter().count(), 11);
        // workflows:write only on secret keys (a workflow can call any URL).
        assert!(!ro.contains(Scope::WorkflowsWrite));
        assert!(ro.contains(Scope::WorkflowsRead));
        assert!(!client.contains(Scope::WorkflowsRead));
        // Only secret keys may hold keys:*.
        for t in [KeyType::Client, KeyType::ReadOnly] {
            assert!(!ScopeSet::allowed_for(t).contains(Scope::KeysRead));
            assert!(!ScopeSet::allowed_for(t).contains(Scope::KeysWrite));
        }
    }

    #[test]
    fn parse_and_subset() {
        let set = ScopeSet::parse_all(["contacts:read", "events:write"]).unwrap();
        assert_eq!(set.to_strings(), vec!["contacts:read", "events:write"]);
        assert_eq!(ScopeSet::parse_all(["contacts:read", "nope"]), Err("nope"));
        assert!(set.is_subset_of(ScopeSet::of(&Scope::ALL)));
        assert!(!ScopeSet::of(&Scope::ALL).is_subset_of(set));
        assert_eq!(ScopeSet::of(&Scope::ALL).minus(set).iter().count(), 9);
    }
}
