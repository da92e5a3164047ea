//! Rendering pages: the layout's data ([`Chrome`]), templates to responses,
//! and the one error type of the dashboard ([`PageError`]), which always
//! answers with a page (never JSON, never database text).
//!
//! Templates live in `crates/server/templates/` (askama: checked at compile
//! time, every `{{ value }}` HTML-escaped).

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::error::ApiError;
use crate::operations::OpError;

/// Navigation entries: (path, label, for owners and admins only). A member
/// is not shown the pages that would answer them 403.
const NAV: [(&str, &str, bool); 10] = [
    ("/contacts", "Contacts", false),
    ("/events", "Events", false),
    ("/analytics", "Metrics", false),
    ("/workflows", "Workflows", false),
    ("/keys", "API keys", true),
    ("/activity", "Activity", false),
    ("/members", "Members", true),
    ("/plan", "Plan", true),
    ("/metrics-credential", "Metrics credential", true),
    ("/settings", "Settings", true),
];

/// What the layout shows around a page: its title, the navigation entry to
/// mark current, and (signed in) the operator with the sign-out form's token.
pub struct Chrome {
    pub title: String,
    pub current: &'static str,
    pub operator: Option<OperatorChrome>,
    /// What the last change did (see [`done_notice`]), above the page.
    pub notice: Option<&'static str>,
}

pub struct OperatorChrome {
    pub email: String,
    pub csrf: String,
    /// The project being looked at, kept by the navigation's links.
    pub project: Option<String>,
    /// An owner or admin (who sees every page in the navigation).
    pub manager: bool,
}

impl Chrome {
    /// A page for someone not signed in (sign-in, setup, errors).
    pub fn public(title: &str) -> Self {
        Self {
            title: title.to_string(),
            current: "",
            operator: None,
            notice: None,
        }
    }

    pub fn nav(&self) -> Vec<(&'static str, &'static str)> {
        let manager = self.operator.as_ref().is_some_and(|o| o.manager);
        NAV.iter()
            .filter(|(_, _, managers_only)| manager || !managers_only)
            .map(|(path, label, _)| (*path, *label))
            .collect()
    }

    pub fn is_current(&self, path: &str) -> bool {
        path == self.current
    }
}

/// Renders `template` as the response body with `status`.
pub fn render(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "dashboard template failed to render");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error · Keyflow</title><p>Something went wrong.</p>".into(),
            )
        }
    }
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, Html(body)).into_response();
    // A page is already in its final form: the JSON error shape of the API
    // must not replace it.
    response
        .extensions_mut()
        .insert(crate::error::RenderedError);
    response
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub chrome: Chrome,
    pub heading: &'a str,
    /// Shown as an alert (an error), or as a paragraph when `alert` is false.
    pub text: &'a str,
    pub alert: bool,
}

/// Why a page could not be shown; each renders as a page of its own.
pub enum PageError {
    /// Not signed in (or the session ended): to the sign-in page, which
    /// comes back to the page asked for (`next`, a path of this site).
    SignIn(Option<String>),
    /// A form posted from another site, or without this session's token.
    CrossSite,
    /// Signed in, but the role does not allow the page.
    Forbidden {
        chrome: Box<Chrome>,
        heading: &'static str,
        text: &'static str,
    },
    /// Anything else: the message of the error in the API's words (for an
    /// internal failure, the generic one; the cause went to the log).
    Failed(ApiError),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn(None) => Redirect::to("/signin").into_response(),
            Self::SignIn(Some(next)) => {
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &next)
                    .finish();
                Redirect::to(&format!("/signin?{query}")).into_response()
            }
            Self::CrossSite => render(
                StatusCode::FORBIDDEN,
                &MessagePage {
                    chrome: Chrome::public("Refused"),
                    heading: "Request refused",
                    text: "This form was posted from another site. Nothing was changed.",
                    alert: true,
                },
            ),
            Self::Forbidden {
                chrome,
                heading,
                text,
            } => render(
                StatusCode::FORBIDDEN,
                &MessagePage {
                    chrome: *chrome,
                    heading,
                    text,
                    alert: false,
                },
            ),
            Self::Failed(err) => {
                let status = StatusCode::from_u16(err.code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                render(
                    status,
                    &MessagePage {
                        chrome: Chrome::public("Error"),
                        heading: "Something went wrong",
                        text: &err.message,
                        alert: true,
                    },
                )
            }
        }
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self::Failed(e)
    }
}

impl From<OpError> for PageError {
    fn from(e: OpError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<keyflow_store::StoreError> for PageError {
    fn from(e: keyflow_store::StoreError) -> Self {
        Self::Failed(e.into())
    }
}

pub type PageResult = Result<Response, PageError>;

/// What an unknown path answers: the API's JSON 404 under `/v1`, `/admin`
/// and for clients that do not ask for HTML; a page for a browser.
pub async fn not_found(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> Response {
    let path = uri.path();
    let api = path.starts_with("/v1/") || path == "/v1" || path.starts_with("/admin");
    let browser = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if api || !browser {
        return ApiError::from_status(StatusCode::NOT_FOUND).into_response();
    }
    render(
        StatusCode::NOT_FOUND,
        &MessagePage {
            chrome: Chrome::public("Not found"),
            heading: "Page not found",
            text: "There is no page at this address. The dashboard starts at /keys.",
            alert: false,
        },
    )
}

/// A time as pages show it: to the second, in UTC, always the same width
/// ("2026-11-30 18:23:45 UTC"), however many milliseconds it carries.
pub fn shown_time(at: i64) -> String {
    let iso = keyflow_core::timefmt::format_rfc3339(at.div_euclid(1000) * 1000);
    let (date, rest) = iso.split_once('T').unwrap_or((&iso, ""));
    let clock = rest.get(..8).unwrap_or(rest);
    format!("{date} {clock} UTC")
}

/// "3 minutes ago" for a past time, relative to `now` (both Unix ms).
pub fn relative_time(at: i64, now: i64) -> String {
    let seconds = (now - at).max(0) / 1000;
    let (n, unit) = match seconds {
        0..=59 => return "just now".to_string(),
        60..=3599 => (seconds / 60, "minute"),
        3600..=86_399 => (seconds / 3600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// The message a page shows after a change that redirected to it with
/// `?done=WHAT`: fixed words per change, never text from the URL.
pub fn done_notice(query: &std::collections::HashMap<String, String>) -> Option<&'static str> {
    Some(match query.get("done")?.as_str() {
        "saved" => "Saved.",
        "welcome-free" => {
            "Keyflow is set up. The workspace is on the free plan, which has no API \
                           access: its keys answer 403 until it moves to pro or team (Plan). \
                           Create its first API key here."
        }
        "welcome-pro" => {
            "Keyflow is set up. The workspace is on the pro plan. Create its first \
                          API key here."
        }
        "welcome-team" => {
            "Keyflow is set up. The workspace is on the team plan. Create its first \
                           API key here."
        }
        "revoked" => "Key revoked: every request with it is refused from now on (401 key_revoked).",
        "plan" => "Plan changed.",
        "added" => "Member added.",
        "role" => "Role changed.",
        "removed" => "Member removed: they can no longer sign in to this workspace.",
        _ => return None,
    })
}

/// Where sign-in may send the browser afterwards: a path of this site
/// (`/keys?project=…`), never another site (`//evil.example`, `/\\evil`),
/// nor sign-in itself.
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && next.len() <= 2000
        && !next.starts_with("/signin");
    ok.then_some(next)
}

/// The words of an operation's refusal, for the message next to a form.
pub fn refusal(e: OpError) -> String {
    ApiError::from(e).message
}

/// Field errors as one line: "name: is required; expires_at: …".
pub fn field_errors(fields: &[keyflow_core::FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_times_have_one_width() {
        assert_eq!(shown_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(shown_time(1_999), "1970-01-01 00:00:01 UTC");
        assert_eq!(shown_time(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn relative_time_in_words() {
        assert_eq!(relative_time(0, 30_000), "just now");
        assert_eq!(relative_time(0, 180_000), "3 minutes ago");
        assert_eq!(relative_time(0, 3_600_000), "1 hour ago");
        assert_eq!(relative_time(0, 3 * 86_400_000), "3 days ago");
    }

    #[test]
    fn the_layout_escapes_what_it_shows() {
        let page = MessagePage {
            chrome: Chrome {
                title: "<b>".into(),
                current: "/activity",
                operator: Some(OperatorChrome {
                    email: "<i>@x.io".into(),
                    csrf: "tok".into(),
                    project: Some("\"><p>".into()),
                    manager: true,
                }),
                notice: None,
            },
            heading: "<h>",
            text: "<script>alert('x')</script> & \"q\"",
            alert: true,
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<b>") && !html.contains("<i>@") && !html.contains("<h>"));
        assert!(
            !html.contains("\"><p>"),
            "the project in the nav's links is escaped"
        );
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&#60;script&#62;alert("));
        assert!(html.contains("<a href=\"/activity?project=&#34;&#62;&#60;p&#62;\" aria-current=\"page\">Activity</a>"), "{html}");
    }
}
