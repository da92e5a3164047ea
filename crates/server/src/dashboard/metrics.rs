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

use super::extract::{Viewer, ViewerForm};
use super::page::{Chrome, PageResult, render};
use crate::state::SharedState;

/// A bar chart of one series, with a y axis (0, half, a round maximum)
/// and the first and last bucket under the x axis; each bar's `<title>`
/// gives its value, and `values` lists them all for keyboards and screen
/// readers.
pub struct BarChart {
    pub title: &'static str,
    /// What the heading adds (a total, or the highest day for uniques).
    pub summary: String,
    pub width: i64,
    pub height: i64,
    /// Room above the plot, so the top label is not cut.
    pub top: i64,
    /// Left margin for the y axis' numbers.
    pub left: i64,
    pub bar: i64,
    pub bars: Vec<ChartBar>,
    pub first: String,
    pub last: String,
    /// (y, label) of the axis lines.
    pub ticks: [(i64, String); 3],
}

pub struct ChartBar {
    pub x: i64,
    pub y: i64,
    pub h: i64,
    pub label: String,
    pub value: String,
}

/// The smallest of 2, 4, 10, 20, 40, 100, … at or above `max`: even, so
/// the middle line is a whole number too.
fn axis_max(max: i64) -> i64 {
    let mut scale = 1i64;
    loop {
        for m in [2, 4, 10] {
            let candidate = scale.saturating_mul(m);
            if candidate >= max || candidate == i64::MAX {
                return candidate;
            }
        }
        scale = scale.saturating_mul(10);
    }
}

/// 1234567 → "1,234,567".
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// An axis label that fits the margin: 950, 12k, 1.2M, 3.4G.
fn compact(n: i64) -> String {
    let f = n as f64;
    if n < 1_000 {
        n.to_string()
    } else if n < 1_000_000 {
        format!("{}k", trim(f / 1e3))
    } else if n < 1_000_000_000 {
        format!("{}M", trim(f / 1e6))
    } else {
        format!("{}G", trim(f / 1e9))
    }
}

fn trim(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}").trim_end_matches(".0").to_string()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Summary {
    /// The range's total (events, contacts created).
    Total,
    /// The highest bucket (unique contacts: daily figures do not add up).
    Highest,
}

impl BarChart {
    fn of(title: &'static str, summary: Summary, points: &[Point], width_ms: i64) -> Self {
        let (left, top, height, plot) = (44, 10, 140, 600);
        let n = i64::try_from(points.len()).unwrap_or(1).max(1);
        let step = (plot / n).max(2);
        let bar = (step * 4 / 5).max(1);
        let highest = points.iter().map(|p| p.value).max().unwrap_or(0);
        let max = axis_max(highest.max(1));
        let label = |t: i64| {
            let text = format_rfc3339(t);
            let cut = if width_ms == DAY_MS { 10 } else { 16 };
            text.get(..cut).unwrap_or(&text).replace('T', " ")
        };
        let bars = points
            .iter()
            .zip(0..)
            .map(|(p, i)| {
                // A non-zero value is never invisible.
                let h = (p.value * height / max).max(i64::from(p.value > 0));
                ChartBar {
                    x: left + i * step,
                    y: top + height - h,
                    h,
                    label: label(p.t),
                    value: grouped(p.value),
                }
            })
            .collect();
        let summary = match summary {
            Summary::Total => format!("{} in range", grouped(points.iter().map(|p| p.value).sum())),
            Summary::Highest => format!("at most {} in a day", grouped(highest)),
        };
        Self {
            title,
            summary,
            width: left + n * step,
            height,
            top,
            left,
            bar,
            bars,
            first: points.first().map(|p| label(p.t)).unwrap_or_default(),
            last: points.last().map(|p| label(p.t)).unwrap_or_default(),
            ticks: [
                (top + height, "0".into()),
                (top + height / 2, compact(max / 2)),
                (top, compact(max)),
            ],
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
    /// What the charts show, in words (range, interval, filter).
    showing: String,
    charts: Vec<BarChart>,
    top: Vec<(String, String)>,
    cache_ttl_minutes: i64,
    /// Owners and admins (the credential page is theirs).
    manager: bool,
    has_credential: bool,
    console: Console,
    schema: crate::api::metrics_query::SchemaView,
    csrf: &'a str,
    /// The chart settings, so running SQL keeps them.
    chart_query: String,
}

/// The SQL console: what was typed, and its answer or why there is none.
#[derive(Default)]
pub struct Console {
    pub sql: String,
    pub error: Option<String>,
    /// "line 2, column 6" when the refusal says where.
    pub error_at: Option<String>,
    pub result: Option<ConsoleResult>,
}

pub struct ConsoleResult {
    pub columns: Vec<String>,
    /// Each value as shown (`None`: NULL).
    pub rows: Vec<Vec<Option<String>>>,
    pub row_count: usize,
    /// Rows left out of the page (the API returns them all).
    pub hidden: usize,
    pub truncated: bool,
    /// Where the answer came from, in words.
    pub origin: String,
}

/// Rows the page shows at most.
const SHOWN_ROWS: usize = 500;

impl Console {
    async fn run(state: &SharedState, project: &Project, sql: &str) -> Self {
        let started = std::time::Instant::now();
        let mut console = Console {
            sql: sql.to_string(),
            ..Default::default()
        };
        match crate::api::metrics_query::answer(state, &project.workspace_id, &project.id, sql)
            .await
        {
            Ok((entry, cached)) => {
                let output = entry.output();
                let origin = if cached {
                    format!(
                        "From the cache: computed at {} ({} s ago).",
                        super::page::shown_time(entry.computed_at()),
                        (state.now_ms() - entry.computed_at()).max(0) / 1000
                    )
                } else {
                    format!("Computed now in {} ms.", started.elapsed().as_millis())
                };
                console.result = Some(ConsoleResult {
                    columns: output.columns.clone(),
                    rows: output
                        .rows
                        .iter()
                        .take(SHOWN_ROWS)
                        .map(|row| row.iter().map(shown).collect())
                        .collect(),
                    row_count: output.rows.len(),
                    hidden: output.rows.len().saturating_sub(SHOWN_ROWS),
                    truncated: output.truncated,
                    origin,
                });
            }
            Err(e) => {
                let field = e.details["fields"][0]["message"].as_str();
                console.error = Some(match field {
                    Some(reason) => format!("Not run: {reason}."),
                    None => e.message.clone(),
                });
                let at = &e.details["position"];
                if let (Some(line), Some(column)) = (at["line"].as_u64(), at["column"].as_u64()) {
                    console.error_at = Some(format!("line {line}, column {column}"));
                }
            }
        }
        console
    }
}

/// A value as the results table shows it.
fn shown(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Ranges offered, in days; hourly buckets cover at most `MAX_HOURLY_DAYS`.
const RANGES: [(i64, &str); 5] = [
    (1, "24 hours"),
    (2, "48 hours"),
    (7, "7 days"),
    (30, "30 days"),
    (90, "90 days"),
];
const MAX_HOURLY_DAYS: i64 = 7;

pub async fn page(
    viewer: Viewer,
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    show(viewer, &state, &query, Console::default()).await
}

/// The SQL console's form: runs the query as the Metrics API would (same
/// checks, limits, slots and cache) and shows the page with its answer.
pub async fn run_sql(
    State(state): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
    form: ViewerForm,
) -> PageResult {
    let sql = form.field("sql").to_string();
    let console = if sql.trim().is_empty() {
        Console {
            error: Some("Type a query first.".into()),
            ..Default::default()
        }
    } else {
        Console::run(&state, &form.viewer.project, &sql).await
    };
    show(form.viewer, &state, &query, console).await
}

async fn show(
    viewer: Viewer,
    state: &SharedState,
    query: &HashMap<String, String>,
    console: Console,
) -> PageResult {
    let now = state.now_ms();
    let asked_hourly = query.get("interval").map(String::as_str) == Some("hour");
    let days: i64 = query
        .get("range")
        .and_then(|r| r.parse().ok())
        .filter(|d| RANGES.iter().any(|(n, _)| n == d))
        .unwrap_or(if asked_hourly { 2 } else { 30 });
    let mut notes = Vec::new();
    let hourly = asked_hourly && days <= MAX_HOURLY_DAYS;
    if asked_hourly && !hourly {
        notes.push(format!(
            "hourly buckets cover at most {MAX_HOURLY_DAYS} days, so this range is daily"
        ));
    }
    let width = if hourly { HOUR_MS } else { DAY_MS };
    let to = bucket_start(now, width) + width;
    let buckets = Buckets {
        from: to - days * DAY_MS,
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
    let (charts, top) = if message.is_some() {
        // Nothing is shown for a filter that could not be applied.
        (Vec::new(), Vec::new())
    } else {
        let name = event.as_deref();
        let (counts, uniques, created, top) = tokio::try_join!(
            store.event_counts(p, buckets, name),
            async {
                if hourly {
                    Ok(None)
                } else {
                    store.unique_contacts(p, buckets, name).await.map(Some)
                }
            },
            store.contacts_created(p, buckets),
            store.event_totals(p, buckets, 10),
        )?;
        let mut charts = vec![BarChart::of("Events", Summary::Total, &counts, width)];
        match uniques {
            Some(uniques) => charts.push(BarChart::of(
                "Unique contacts",
                Summary::Highest,
                &uniques,
                width,
            )),
            None => notes.push("unique contacts are kept per day: choose daily to see them".into()),
        }
        charts.push(BarChart::of(
            "Contacts created",
            Summary::Total,
            &created,
            width,
        ));
        let top = top
            .into_iter()
            .map(|(name, n)| (name, grouped(n)))
            .collect();
        (charts, top)
    };
    let settings = store.project_settings(p).await?;
    let has_credential = store.metrics_credential(p).await?.is_some();
    let range_label = RANGES
        .iter()
        .find(|(n, _)| *n == days)
        .map_or("", |(_, label)| label);
    let mut showing = format!(
        "The last {range_label}, {} UTC buckets from {} to {} (the last one still filling)",
        if hourly { "hourly" } else { "daily" },
        format_rfc3339(buckets.from),
        format_rfc3339(buckets.to)
    );
    if let Some(name) = &event {
        showing.push_str(&format!("; events named “{name}” (contacts created: all)"));
    }
    for note in notes {
        showing.push_str("; ");
        showing.push_str(&note);
    }
    showing.push('.');
    let intervals = [("day", "Daily"), ("hour", "Hourly")]
        .map(|(value, label)| Pick {
            value: value.into(),
            label: label.into(),
            selected: (value == "hour") == hourly,
        })
        .into();
    let ranges = RANGES
        .map(|(n, label)| Pick {
            value: n.to_string(),
            label: label.into(),
            selected: n == days,
        })
        .into();
    let chart_query = format!(
        "project={}&interval={}&range={days}&event={}",
        viewer.project.id,
        if hourly { "hour" } else { "day" },
        percent_encode(event.as_deref().unwrap_or(""))
    );
    let page = MetricsPage {
        chrome: viewer.chrome("/analytics", "Metrics"),
        project: &viewer.project,
        projects: &viewer.projects,
        intervals,
        ranges,
        event: event.unwrap_or_else(|| typed.to_string()),
        message,
        showing,
        charts,
        top,
        cache_ttl_minutes: settings.metrics_cache_ttl_minutes,
        manager: viewer.membership.role.can_manage(),
        has_credential,
        schema: crate::api::metrics_query::schema(state),
        csrf: viewer.csrf(),
        chart_query,
        console,
    };
    let status = if page.message.is_some() || page.console.error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(render(status, &page))
}

/// A query-string value, percent-encoded (unreserved characters kept).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_a_round_maximum() {
        let points: Vec<Point> = [0, 1, 5, 10]
            .iter()
            .zip(0..)
            .map(|(v, i)| Point {
                t: i * DAY_MS,
                value: *v,
            })
            .collect();
        let chart = BarChart::of("Events", Summary::Total, &points, DAY_MS);
        assert_eq!(
            chart.ticks.each_ref().map(|t| t.1.as_str()),
            ["0", "5", "10"]
        );
        assert_eq!(chart.summary, "16 in range");
        let heights: Vec<i64> = chart.bars.iter().map(|b| b.h).collect();
        assert_eq!(heights, [0, 14, chart.height / 2, chart.height]);
        assert_eq!(chart.first, "1970-01-01");
        assert_eq!(chart.last, "1970-01-04");
        assert!(chart.bars.windows(2).all(|w| w[0].x < w[1].x));
        // A tiny value next to a large one still shows.
        let tiny = [
            Point { t: 0, value: 1 },
            Point {
                t: DAY_MS,
                value: 100_000,
            },
        ];
        assert_eq!(
            BarChart::of("Events", Summary::Total, &tiny, DAY_MS).bars[0].h,
            1
        );
    }

    #[test]
    fn axis_and_numbers_read_well() {
        let maxima: Vec<i64> = [1, 2, 3, 5, 11, 21, 41, 99, 101, 12_345]
            .map(axis_max)
            .into();
        assert_eq!(maxima, [2, 2, 4, 10, 20, 40, 100, 100, 200, 20_000]);
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(999), "999");
        assert_eq!(compact(950), "950");
        assert_eq!(compact(12_000), "12k");
        assert_eq!(compact(1_200_000), "1.2M");
        assert_eq!(compact(20_000_000), "20M");
    }
}
