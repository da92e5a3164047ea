//! "Restrictions cannot be escalated" (SPEC §2): a key that creates or
//! changes another key may not make it freer than itself. Pure comparisons of
//! two keys' settings; the key operations apply them to create, PATCH and roll.

use crate::clock::UnixMillis;
use crate::error::FieldError;
use crate::ip::{IpRule, parse_network};
use crate::key_settings::KeySettings;

/// Which restriction a settings value would loosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    IpAllowlist,
    ExpiresAt,
    AllowedEvents,
    AllowedOrigins,
    RateLimit,
}

impl Restriction {
    pub const ALL: [Restriction; 5] = [
        Restriction::IpAllowlist,
        Restriction::ExpiresAt,
        Restriction::AllowedEvents,
        Restriction::AllowedOrigins,
        Restriction::RateLimit,
    ];

    pub fn field(self) -> &'static str {
        match self {
            Restriction::IpAllowlist => "ip_allowlist",
            Restriction::ExpiresAt => "expires_at",
            Restriction::AllowedEvents => "allowed_events",
            Restriction::AllowedOrigins => "allowed_origins",
            Restriction::RateLimit => "rate_limit",
        }
    }

    /// Whether `wanted`'s value of this restriction is at most as free as `bound`'s.
    pub fn within(self, bound: &KeySettings, wanted: &KeySettings) -> bool {
        match self {
            Restriction::IpAllowlist => allowlist_within(bound, wanted),
            Restriction::ExpiresAt => match (bound.expires_at, wanted.expires_at) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(b), Some(w)) => w <= b,
            },
            Restriction::AllowedEvents => {
                list_within(&bound.allowed_events, &wanted.allowed_events)
            }
            Restriction::AllowedOrigins => {
                list_within(&bound.allowed_origins, &wanted.allowed_origins)
            }
            Restriction::RateLimit => match (bound.rate_limit, wanted.rate_limit) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(b), Some(w)) => w.at_most(b),
            },
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Restriction::IpAllowlist => {
                "must lie within the calling key's IP allow-list (every entry inside one of its networks)"
            }
            Restriction::ExpiresAt => "must be no later than the calling key's expiry",
            Restriction::AllowedEvents => "must be a subset of the calling key's allowed_events",
            Restriction::AllowedOrigins => "must be a subset of the calling key's allowed_origins",
            Restriction::RateLimit => "must be no higher than the calling key's rate limit",
        }
    }

    /// Whether `a` and `b` hold the same value of this restriction.
    pub fn same(self, a: &KeySettings, b: &KeySettings) -> bool {
        match self {
            Restriction::IpAllowlist => a.ip_allowlist == b.ip_allowlist,
            Restriction::ExpiresAt => a.expires_at == b.expires_at,
            Restriction::AllowedEvents => a.allowed_events == b.allowed_events,
            Restriction::AllowedOrigins => a.allowed_origins == b.allowed_origins,
            Restriction::RateLimit => a.rate_limit == b.rate_limit,
        }
    }

    /// Copies this restriction from `from` into `to`.
    pub fn copy(self, from: &KeySettings, to: &mut KeySettings) {
        match self {
            Restriction::IpAllowlist => to.ip_allowlist = from.ip_allowlist.clone(),
            Restriction::ExpiresAt => to.expires_at = from.expires_at,
            Restriction::AllowedEvents => to.allowed_events = from.allowed_events.clone(),
            Restriction::AllowedOrigins => to.allowed_origins = from.allowed_origins.clone(),
            Restriction::RateLimit => to.rate_limit = from.rate_limit,
        }
    }
}

/// The restrictions of `wanted` (among `which`) that are looser than
/// `bound`'s, as field errors; empty when `wanted` is at most as free.
pub fn looser_than(
    bound: &KeySettings,
    wanted: &KeySettings,
    which: &[Restriction],
) -> Vec<FieldError> {
    which
        .iter()
        .filter(|r| !r.within(bound, wanted))
        .map(|r| FieldError::new(r.field(), r.explain()))
        .collect()
}

/// Whether a key with `settings` has expired or was rolled at `now`: its
/// expiry is then final (SPEC §2).
pub fn expiry_is_final(
    settings: &KeySettings,
    rolled_at: Option<UnixMillis>,
    now: UnixMillis,
) -> bool {
    rolled_at.is_some() || settings.expires_at.is_some_and(|t| t <= now)
}

fn allowlist_within(bound: &KeySettings, wanted: &KeySettings) -> bool {
    allowlist_covers(&bound.ip_allowlist, &wanted.ip_allowlist)
}

/// Whether the allow-list `bound` covers `wanted`: an empty `bound` covers
/// anything; otherwise `wanted` must be non-empty and each of its networks
/// inside one of `bound`'s.
pub fn allowlist_covers(bound: &[IpRule], wanted: &[IpRule]) -> bool {
    if bound.is_empty() {
        return true;
    }
    if wanted.is_empty() {
        return false;
    }
    let bound: Vec<_> = bound
        .iter()
        .filter_map(|r| parse_network(&r.cidr))
        .collect();
    wanted.iter().all(|rule| {
        parse_network(&rule.cidr).is_some_and(|net| bound.iter().any(|b| b.contains(&net)))
    })
}

fn list_within(bound: &Option<Vec<String>>, wanted: &Option<Vec<String>>) -> bool {
    match (bound, wanted) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(b), Some(w)) => w.iter().all(|item| b.contains(item)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::RateLimit;

    fn rules(cidrs: &[&str]) -> Vec<IpRule> {
        cidrs
            .iter()
            .map(|c| IpRule {
                cidr: c.to_string(),
                description: String::new(),
            })
            .collect()
    }

    fn fields(bound: &KeySettings, wanted: &KeySettings) -> Vec<String> {
        looser_than(bound, wanted, &Restriction::ALL)
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn an_unrestricted_bound_allows_anything() {
        let wanted = KeySettings {
            ip_allowlist: rules(&["10.0.0.0/8"]),
            expires_at: Some(5),
            ..Default::default()
        };
        assert!(fields(&KeySettings::default(), &wanted).is_empty());
        assert!(fields(&KeySettings::default(), &KeySettings::default()).is_empty());
    }

    #[test]
    fn each_restriction_must_be_kept() {
        let bound = KeySettings {
            ip_allowlist: rules(&["10.0.0.0/8", "2001:db8::/32"]),
            expires_at: Some(1_000),
            allowed_events: Some(vec!["a".into(), "b".into()]),
            allowed_origins: None,
            rate_limit: Some(RateLimit::per_minute(100)),
            ..Default::default()
        };
        // Everything lifted: every restriction reported.
        assert_eq!(
            fields(&bound, &KeySettings::default()),
            vec!["ip_allowlist", "expires_at", "allowed_events", "rate_limit"]
        );
        // Everything narrower: fine.
        let narrower = KeySettings {
            ip_allowlist: rules(&["10.1.0.0/16", "2001:db8:1::1"]),
            expires_at: Some(999),
            allowed_events: Some(vec!["b".into()]),
            rate_limit: Some(RateLimit {
                limit: 10,
                period_seconds: 60,
            }),
            ..Default::default()
        };
        assert!(fields(&bound, &narrower).is_empty());
        // Wider in one way each.
        let wider = KeySettings {
            ip_allowlist: rules(&["10.1.0.0/16", "11.0.0.1"]),
            expires_at: Some(1_001),
            allowed_events: Some(vec!["b".into(), "c".into()]),
            // Same burst, faster refill.
            rate_limit: Some(RateLimit {
                limit: 100,
                period_seconds: 30,
            }),
            ..Default::default()
        };
        assert_eq!(
            fields(&bound, &wider),
            vec!["ip_allowlist", "expires_at", "allowed_events", "rate_limit"]
        );
        // A bigger burst over a longer period is refused too.
        let burst = KeySettings {
            rate_limit: Some(RateLimit {
                limit: 150,
                period_seconds: 120,
            }),
            ..bound.clone()
        };
        assert_eq!(fields(&bound, &burst), vec!["rate_limit"]);
    }

    #[test]
    fn expiry_is_final_once_expired_or_rolled() {
        let s = KeySettings {
            expires_at: Some(100),
            ..Default::default()
        };
        assert!(!expiry_is_final(&s, None, 99));
        assert!(expiry_is_final(&s, None, 100));
        assert!(expiry_is_final(&KeySettings::default(), Some(5), 0));
        assert!(!expiry_is_final(&KeySettings::default(), None, 1_000));
    }
}
