//! GCRA (the generic cell rate algorithm) as a pure function. The limiter
//! stores one number per (key, category): the theoretical arrival time (TAT).
//! A quota of `limit` per `period` allows bursts of up to `limit` and refills
//! smoothly at one request per `period / limit`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub limit: u32,
    pub period_seconds: u32,
}

impl RateLimit {
    pub const MAX_LIMIT: u32 = 1_000_000;
    pub const MAX_PERIOD_SECONDS: u32 = 86_400;

    pub fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            period_seconds: 60,
        }
    }

    pub fn is_valid(&self) -> bool {
        (1..=Self::MAX_LIMIT).contains(&self.limit)
            && (1..=Self::MAX_PERIOD_SECONDS).contains(&self.period_seconds)
    }

    /// Whether this quota is no higher than `ceiling`, in burst (the limit)
    /// and in sustained rate (limit per period).
    pub fn at_most(&self, ceiling: RateLimit) -> bool {
        let sustained = u64::from(self.limit) * u64::from(ceiling.period_seconds)
            <= u64::from(ceiling.limit) * u64::from(self.period_seconds);
        self.limit <= ceiling.limit && sustained
    }

    pub fn period_us(&self) -> i64 {
        i64::from(self.period_seconds.max(1)) * 1_000_000
    }

    /// Time between two requests at the steady rate.
    pub fn emission_interval_us(&self) -> i64 {
        (self.period_us() / i64::from(self.limit.max(1))).max(1)
    }

    /// Parses `100/60` (limit per period in seconds) or `100` (per minute).
    pub fn parse(text: &str) -> Option<Self> {
        let (limit, period) = match text.split_once('/') {
            Some((l, p)) => (l.trim().parse().ok()?, p.trim().parse().ok()?),
            None => (text.trim().parse().ok()?, 60),
        };
        let rl = Self {
            limit,
            period_seconds: period,
        };
        rl.is_valid().then_some(rl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraDecision {
    pub allowed: bool,
    /// The TAT to store (unchanged when denied).
    pub new_tat_us: i64,
    pub limit: u32,
    /// Requests still allowed right now after this one.
    pub remaining: u32,
    /// Microseconds until the full quota is back.
    pub reset_after_us: i64,
    /// Microseconds until one more request would be allowed (0 when allowed).
    pub retry_after_us: i64,
}

impl GcraDecision {
    /// `X-RateLimit-Reset`: Unix seconds at which the full quota is back.
    pub fn reset_unix_seconds(&self, now_us: i64) -> i64 {
        ceil_div(now_us + self.reset_after_us, 1_000_000)
    }
    /// Seconds until the full quota is back (IETF `RateLimit` `t=`).
    pub fn reset_after_seconds(&self) -> i64 {
        ceil_div(self.reset_after_us, 1_000_000)
    }
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_seconds(&self) -> i64 {
        ceil_div(self.retry_after_us, 1_000_000).max(1)
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    if a <= 0 { a / b } else { (a + b - 1) / b }
}

/// Decides one request of cost 1 at `now_us`, given the stored TAT (if any).
/// With `consume = false` it reports the state without using quota.
pub fn gcra(
    stored_tat_us: Option<i64>,
    now_us: i64,
    quota: RateLimit,
    consume: bool,
) -> GcraDecision {
    let t = quota.emission_interval_us();
    let period = quota.period_us();
    let tat = stored_tat_us.unwrap_or(now_us).max(now_us);
    let remaining_of = |tat_after: i64| -> u32 {
        let spare = period - (tat_after - now_us);
        u32::try_from((spare / t).max(0))
            .unwrap_or(0)
            .min(quota.limit)
    };
    if !consume {
        return GcraDecision {
            allowed: tat + t - now_us <= period,
            new_tat_us: tat,
            limit: quota.limit,
            remaining: remaining_of(tat),
            reset_after_us: tat - now_us,
            retry_after_us: (tat + t - now_us - period).max(0),
        };
    }
    let new_tat = tat + t;
    if new_tat - now_us <= period {
        GcraDecision {
            allowed: true,
            new_tat_us: new_tat,
            limit: quota.limit,
            remaining: remaining_of(new_tat),
            reset_after_us: new_tat - now_us,
            retry_after_us: 0,
        }
    } else {
        GcraDecision {
            allowed: false,
            new_tat_us: tat,
            limit: quota.limit,
            remaining: 0,
            reset_after_us: tat - now_us,
            retry_after_us: new_tat - now_us - period,
        }
    }
}

/// Gives back one request charged earlier (a sign-in that turned out right):
/// the stored TAT moves back one interval, never before `now_us`.
pub fn gcra_refund(stored_tat_us: i64, now_us: i64, quota: RateLimit) -> i64 {
    (stored_tat_us - quota.emission_interval_us()).max(now_us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refund_gives_back_one_request() {
        let quota = RateLimit::per_minute(2);
        let a = gcra(None, 0, quota, true);
        let b = gcra(Some(a.new_tat_us), 0, quota, true);
        assert!(!gcra(Some(b.new_tat_us), 0, quota, true).allowed);
        let tat = gcra_refund(b.new_tat_us, 0, quota);
        assert!(gcra(Some(tat), 0, quota, true).allowed);
        assert_eq!(gcra_refund(5, 10, quota), 10);
    }

    fn run(quota: RateLimit, times_us: &[i64]) -> Vec<bool> {
        let mut tat = None;
        times_us
            .iter()
            .map(|&now| {
                let d = gcra(tat, now, quota, true);
                tat = Some(d.new_tat_us);
                d.allowed
            })
            .collect()
    }

    #[test]
    fn burst_up_to_the_limit_then_deny() {
        let quota = RateLimit::per_minute(5);
        let results = run(quota, &[0; 6]);
        assert_eq!(results, vec![true, true, true, true, true, false]);
    }

    #[test]
    fn remaining_counts_down_and_retry_after_is_one_interval() {
        let quota = RateLimit::per_minute(3);
        let mut tat = None;
        let mut remaining = vec![];
        for _ in 0..3 {
            let d = gcra(tat, 0, quota, true);
            tat = Some(d.new_tat_us);
            remaining.push(d.remaining);
        }
        assert_eq!(remaining, vec![2, 1, 0]);
        let denied = gcra(tat, 0, quota, true);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_us, 20_000_000);
        assert_eq!(denied.retry_after_seconds(), 20);
        assert_eq!(denied.reset_after_seconds(), 60);
    }

    #[test]
    fn refills_smoothly() {
        let quota = RateLimit::per_minute(60); // one per second
        let mut times = vec![0; 60];
        times.push(0); // denied
        times.push(1_000_000); // one second later: one more
        times.push(1_000_000); // but not two
        let results = run(quota, &times);
        assert!(results[..60].iter().all(|a| *a));
        assert_eq!(&results[60..], &[false, true, false]);
    }

    #[test]
    fn peek_does_not_consume() {
        let quota = RateLimit::per_minute(1);
        let peek = gcra(None, 0, quota, false);
        assert!(peek.allowed);
        assert_eq!(peek.remaining, 1);
        let d = gcra(Some(peek.new_tat_us), 0, quota, true);
        assert!(d.allowed);
    }

    #[test]
    fn parse_text() {
        assert_eq!(RateLimit::parse("100/60"), Some(RateLimit::per_minute(100)));
        assert_eq!(RateLimit::parse("30"), Some(RateLimit::per_minute(30)));
        assert_eq!(RateLimit::parse("0/60"), None);
        assert_eq!(RateLimit::parse("x"), None);
    }

    proptest! {
        /// Token-bucket bound: between any two allowed requests at t_i <= t_j,
        /// at most `1 + (t_j - t_i + tau) / interval` requests pass.
        #[test]
        fn never_more_than_the_bucket_allows(
            limit in 1u32..50,
            gaps in proptest::collection::vec(0i64..3_000_000, 1..300)
        ) {
            let quota = RateLimit::per_minute(limit);
            let interval = 60_000_000 / i64::from(limit);
            let mut now = 0;
            let mut times = vec![];
            for g in gaps { now += g; times.push(now); }
            let results = run(quota, &times);
            let allowed: Vec<i64> = times.iter().zip(&results).filter(|(_, a)| **a).map(|(t, _)| *t).collect();
            for i in 0..allowed.len() {
                for j in i..allowed.len() {
                    // The exact GCRA bound with burst tolerance tau = period - interval:
                    // 1 + floor((elapsed + tau) / interval). (The interval is the
                    // period divided by the limit in whole microseconds, so this can
                    // exceed `limit + elapsed / interval` by one at a rounding edge.)
                    let count = (j - i + 1) as i64;
                    let tau = 60_000_000 - interval;
                    prop_assert!(count <= 1 + (allowed[j] - allowed[i] + tau) / interval);
                }
            }
        }
    }
}
