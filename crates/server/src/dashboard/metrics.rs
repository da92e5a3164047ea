//! `/analytics`: the Metrics page (SPEC §6) for every member — the Metrics
//! API's predefined metrics as bar charts drawn on the server (SVG with
//! axes; no script, no library), an interval and range picker, an event
//! filter, and the most frequent events. Read straight from the roll-ups:
//! an operator needs no access token. (`/metrics` is Prometheus'.)

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use keyflow_core::timefmt::format_rfc3339;
use keyflow_store::areas::metrics::{DAY_MS, HOUR_MS, bucket_start};
use keyflow_store::{Buckets, Point, Project};

use super::extract::Viewer;
use super::page::{Chrome, PageResult, render};
use crate::state::SharedState;

/// A bar chart of one series, with a y axis (0, half, max) and the first
/// and last bucket under the x axis; each bar's `<title>` gives its value.
pub struct BarChart {
    pub title: &'static str,
    pub width: i64,
    pub height: i64,
    /// Left margin for the y axis' numbers.
    pub left: i64,
    pub bar: i64,
    pub max: i64,
    pub total: i64,
    pub bars: Vec<ChartBar>,
    pub first: String,
    pub last: String,
    pub ticks: [(i64, i64); 3],
}

pub struct ChartBar {
    pub x: i64,
    pub y: i64,
    pub h: i64,
    pub label: String,
    pub value: i64,
}

impl BarChart {
    fn of(title: &'static str, points: &[Point], width_ms: i64) -> Self {
        let (left, height, plot) = (44, 140, 600);
        let n = i64::try_from(points.len()).unwrap_or(1).max(1);
        let step = (plot / n).max(2);
        let bar = (step * 4 / 5).max(1);
        let max = points.iter().map(|p| p.value).max().unwrap_or(0).max(1);
        let label = |t: i64| {
            let text = format_rfc3339(t);
            let cut = if width_ms == DAY_MS { 10 } else { 16 };
            text.get(..cut).unwrap_or(&text).replace('T', " ")
        };
        let bars = points
            .iter()
            .zip(0..)
            .map(|(p, i)| {
                let h = p.value * height / max;
                ChartBar {
                    x: left + i * step,
                    y: height - h,
                    h,
                    label: label(p.t),
                    value: p.value,
                }
            })
            .collect();
        Self {
            title,
            width: left + n * step,
            height,
            left,
            bar,
            max,
            total: points.iter().map(|p| p.value).sum(),
            bars,
            first: points.first().map(|p| label(p.t)).unwrap_or_default(),
            last: points.last().map(|p| label(p.t)).unwrap_or_default(),
            ticks: [(height, 0), (height / 2, max / 2), (0, max)],
        }
    }
}

/// One option of a picker.
pub struct Pick {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "analytics.html")]
struct MetricsPage<'a> {
    chrome: Chrome,
    project: &'a Project,
    projects: &'a [Project],
    intervals: Vec<Pick>,
    ranges: Vec<Pick>,
    event: String,
    message: Option<String>,
    from: String,
    to: String,
    charts: Vec<BarChart>,
    top: Vec<(String, i64)>,
    cache_ttl_minutes: i64,
    has_credential: bool,
}

/// Ranges offered per interval, in buckets.
const DAY_RANGES: [(i64, &str); 3] = [(7, "7 days"), (30, "30 days"), (90, "90 days")];
const HOUR_RANGES: [(i64, &str); 3] = [(24, "24 hours"), (48, "48 hours"), (168, "7 days")];

pub async fn page(
    viewer: Viewer,
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let now = state.now_ms();
    let hourly = query.get("interval").map(String::as_str) == Some("hour");
    let (width, offered) = if hourly {
        (HOUR_MS, HOUR_RANGES)
    } else {
        (DAY_MS, DAY_RANGES)
    };
    let asked: Option<i64> = query.get("range").and_then(|r| r.parse().ok());
    let range = offered
        .iter()
        .map(|(n, _)| *n)
        .find(|n| Some(*n) == asked)
        .unwrap_or(offered[if hourly { 0 } else { 1 }].0);
    let to = bucket_start(now, width) + width;
    let buckets = Buckets {
        from: to - range * width,
        to,
        width,
    };
    let typed = query.get("event").map(|e| e.trim()).unwrap_or("");
    let (event, message) = if typed.is_empty() {
        (None, None)
    } else {
        let name = keyflow_core::events::normalise_event_name(typed);
        match keyflow_core::events::check_event_name("event", &name) {
            Ok(name) => (Some(name), None),
            Err(e) => (None, Some(format!("Event name: {}", e.message))),
        }
    };
    let p = viewer.project.id.as_str();
    let store = state.store.as_ref();
    let mut charts = vec![BarChart::of(
        "Events",
        &store.event_counts(p, buckets, event.as_deref()).await?,
        width,
    )];
    if !hourly {
        charts.push(BarChart::of(
            "Unique contacts",
            &store.unique_contacts(p, buckets, event.as_deref()).await?,
            width,
        ));
    }
    charts.push(BarChart::of(
        "Contacts created",
        &store.contacts_created(p, buckets).await?,
        width,
    ));
    let top = store.event_totals(p, buckets, 10).await?;
    let settings = store.project_settings(p).await?;
    let has_credential = store.metrics_credential(p).await?.is_some();
    let intervals = [("day", "Daily"), ("hour", "Hourly")]
        .map(|(value, label)| Pick {
            value: value.into(),
            label: label.into(),
            selected: (value == "hour") == hourly,
        })
        .into();
    let ranges = offered
        .map(|(n, label)| Pick {
            value: n.to_string(),
            label: label.into(),
            selected: n == range,
        })
        .into();
    let page = MetricsPage {
        chrome: viewer.chrome("/analytics", "Metrics"),
        project: &viewer.project,
        projects: &viewer.projects,
        intervals,
        ranges,
        event: event.unwrap_or_else(|| typed.to_string()),
        message,
        from: format_rfc3339(buckets.from),
        to: format_rfc3339(buckets.to),
        charts,
        top,
        cache_ttl_minutes: settings.metrics_cache_ttl_minutes,
        has_credential,
    };
    let status = if page.message.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(render(status, &page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value() {
        let points: Vec<Point> = [0, 5, 10]
            .iter()
            .zip(0..)
            .map(|(v, i)| Point {
                t: i * DAY_MS,
                value: *v,
            })
            .collect();
        let chart = BarChart::of("Events", &points, DAY_MS);
        assert_eq!(chart.max, 10);
        assert_eq!(chart.total, 15);
        let heights: Vec<i64> = chart.bars.iter().map(|b| b.h).collect();
        assert_eq!(heights, [0, chart.height / 2, chart.height]);
        assert_eq!(chart.first, "1970-01-01");
        assert_eq!(chart.last, "1970-01-03");
        assert!(chart.bars.windows(2).all(|w| w[0].x < w[1].x));
    }
}
