//! How a run moves through its steps (SPEC §10): step paths, the next step,
//! statuses, and when a failed webhook is tried again.

use serde::{Deserialize, Serialize};

use super::Step;

/// One part of a step's path: an index in a list, or which list of a
/// branch (`[2, "then", 0]` is the first step of the third step's `then`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Part {
    Index(usize),
    Side(Side),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Then,
    Else,
}

/// Where a step is in a definition.
pub type StepPath = Vec<Part>;

/// `2.then.0`: a path as text (the steps' key, and what the API shows).
pub fn path_text(path: &[Part]) -> String {
    path.iter()
        .map(|part| match part {
            Part::Index(i) => i.to_string(),
            Part::Side(Side::Then) => "then".into(),
            Part::Side(Side::Else) => "else".into(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The list of steps that holds the step at `path` (the path's last part
/// is the step's index in it).
fn list_at<'s>(steps: &'s [Step], path: &[Part]) -> Option<&'s [Step]> {
    let mut list = steps;
    let mut parts = path.iter();
    while parts.len() > 1 {
        let (Some(Part::Index(i)), Some(Part::Side(side))) = (parts.next(), parts.next()) else {
            return None;
        };
        let Some(Step::Branch {
            then, otherwise, ..
        }) = list.get(*i)
        else {
            return None;
        };
        list = match side {
            Side::Then => then,
            Side::Else => otherwise,
        };
    }
    Some(list)
}

/// The step at `path`, if the definition has one there.
pub fn step_at<'s>(steps: &'s [Step], path: &[Part]) -> Option<&'s Step> {
    match path.last()? {
        Part::Index(i) => list_at(steps, path)?.get(*i),
        Part::Side(_) => None,
    }
}

/// The first step of a run: `[0]`, or `None` for no steps.
pub fn first(steps: &[Step]) -> Option<StepPath> {
    (!steps.is_empty()).then(|| vec![Part::Index(0)])
}

/// The step after the one at `path` once it is done (a branch's lists
/// are not entered: see [`into_branch`]); `None` when the run is over.
pub fn after(steps: &[Step], path: &[Part]) -> Option<StepPath> {
    let Some(Part::Index(i)) = path.last() else {
        return None;
    };
    let list = list_at(steps, path)?;
    if i + 1 < list.len() {
        let mut next = path.to_vec();
        *next.last_mut()? = Part::Index(i + 1);
        return Some(next);
    }
    // The end of a branch's list: on after the branch step itself.
    if path.len() >= 3 {
        return after(steps, &path[..path.len() - 2]);
    }
    None
}

/// Where a run goes from the branch step at `path` when its conditions
/// chose `side`: that list's first step, or past the branch if it is empty.
pub fn into_branch(steps: &[Step], path: &[Part], side: Side) -> Option<StepPath> {
    let mut inside = path.to_vec();
    inside.push(Part::Side(side));
    inside.push(Part::Index(0));
    if step_at(steps, &inside).is_some() {
        Some(inside)
    } else {
        after(steps, path)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Running or waiting: the run still has steps to take.
    pub fn is_active(self) -> bool {
        matches!(self, RunStatus::Running | RunStatus::Waiting)
    }
}

/// Waits before the retries of a failed webhook (SPEC §10): about 5 s,
/// 5 min, 30 min, 2 h, 5 h, 10 h and 10 h.
pub const RETRY_SCHEDULE_SECS: [u64; 7] = [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000];
/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER_SECS: u64 = 86_400;

/// How long to wait after failed attempt number `attempt` (1 for the
/// first) before the next, in milliseconds; `None` when the attempts are
/// used up. `jitter` in [-1, 1] moves the wait by up to ±10 %; a receiver's
/// `Retry-After` (seconds, at most 24 h) replaces the schedule's wait, but
/// is never shorter than its first (5 s).
pub fn retry_delay_ms(attempt: u32, jitter: f64, retry_after_secs: Option<u64>) -> Option<u64> {
    let index = usize::try_from(attempt.checked_sub(1)?).ok()?;
    let scheduled = *RETRY_SCHEDULE_SECS.get(index)?;
    // Never sooner than the first wait: `Retry-After: 0` would otherwise
    // spend every attempt within a second.
    if let Some(asked) = retry_after_secs.filter(|s| *s <= MAX_RETRY_AFTER_SECS) {
        return Some(asked.max(RETRY_SCHEDULE_SECS[0]) * 1000);
    }
    let factor = 1.0 + 0.1 * jitter.clamp(-1.0, 1.0);
    Some(((scheduled * 1000) as f64 * factor).round() as u64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::workflows::parse_steps;

    #[test]
    fn runs_walk_branches_and_come_back_out() {
        let steps = parse_steps(&json!([
            {"type": "subscribe"},
            {"type": "branch", "if": [],
             "then": [{"type": "wait", "seconds": 1},
                      {"type": "branch", "if": [], "then": [{"type": "exit"}]}],
             "else": []},
            {"type": "unsubscribe"}
        ]))
        .unwrap();
        let p = |v: serde_json::Value| -> StepPath { serde_json::from_value(v).unwrap() };
        assert_eq!(first(&steps), Some(p(json!([0]))));
        assert_eq!(after(&steps, &p(json!([0]))), Some(p(json!([1]))));
        assert_eq!(
            into_branch(&steps, &p(json!([1])), Side::Then),
            Some(p(json!([1, "then", 0])))
        );
        // An empty list goes straight past the branch.
        assert_eq!(
            into_branch(&steps, &p(json!([1])), Side::Else),
            Some(p(json!([2])))
        );
        assert_eq!(
            after(&steps, &p(json!([1, "then", 0]))),
            Some(p(json!([1, "then", 1])))
        );
        let inner = p(json!([1, "then", 1, "then", 0]));
        assert!(matches!(step_at(&steps, &inner), Some(Step::Exit)));
        // The end of nested lists climbs out to the step after the outer branch.
        assert_eq!(after(&steps, &inner), Some(p(json!([2]))));
        assert_eq!(after(&steps, &p(json!([2]))), None);
        assert_eq!(path_text(&inner), "1.then.1.then.0");
        assert_eq!(
            serde_json::to_value(&inner).unwrap(),
            json!([1, "then", 1, "then", 0])
        );
        assert!(step_at(&steps, &p(json!([7]))).is_none());
        assert!(step_at(&steps, &p(json!([0, "then", 0]))).is_none());
    }

    #[test]
    fn retries_follow_the_schedule() {
        assert_eq!(retry_delay_ms(1, 0.0, None), Some(5_000));
        assert_eq!(retry_delay_ms(2, 0.0, None), Some(300_000));
        assert_eq!(retry_delay_ms(7, 0.0, None), Some(36_000_000));
        assert_eq!(
            retry_delay_ms(8, 0.0, None),
            None,
            "seven retries, then failed"
        );
        assert_eq!(retry_delay_ms(0, 0.0, None), None);
        assert_eq!(retry_delay_ms(1, 1.0, None), Some(5_500));
        assert_eq!(retry_delay_ms(1, -5.0, None), Some(4_500));
        assert_eq!(retry_delay_ms(3, 0.3, Some(60)), Some(60_000));
        assert_eq!(
            retry_delay_ms(3, 0.0, Some(90_000)),
            Some(1_800_000),
            "over 24 h: ignored"
        );
        assert_eq!(retry_delay_ms(8, 0.0, Some(1)), None);
        assert_eq!(
            retry_delay_ms(4, 0.0, Some(0)),
            Some(5_000),
            "not sooner than 5 s"
        );
    }
}
