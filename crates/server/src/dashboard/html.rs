//! HTML building: escaping and the page layout. Every piece of user-supplied
//! text goes through [`escape`] (or [`attr`]) before it reaches a page.

use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Navigation entries: (path, label).
const NAV: [(&str, &str); 8] = [
    ("/contacts", "Contacts"),
    ("/events", "Events"),
    ("/keys", "API keys"),
    ("/activity", "Activity"),
    ("/members", "Members"),
    ("/plan", "Plan"),
    ("/metrics-credential", "Metrics credential"),
    ("/settings", "Settings"),
];

/// A full page. `operator` is `Some((email, csrf))` when signed in: the header
/// then shows the navigation and a sign-out form.
pub fn page(title: &str, current: &str, operator: Option<(&str, &str)>, body: &str) -> String {
    let mut header = String::from("<header><span class=\"brand\">Keyflow</span>");
    if let Some((email, csrf)) = operator {
        header.push_str("<nav>");
        for (path, label) in NAV {
            let current_attr = if path == current {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(header, "<a href=\"{path}\"{current_attr}>{label}</a>");
        }
        let _ = write!(
            header,
            "</nav><form method=\"post\" action=\"/signout\"><span class=\"muted\">{}</span> \
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button class=\"link\">Sign out</button></form>",
            escape(email),
            escape(csrf)
        );
    }
    header.push_str("</header>");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Keyflow</title><link rel=\"stylesheet\" href=\"/assets/app.css\">\
         <script src=\"/assets/app.js\" defer></script></head>\
         <body>{header}<main>{body}</main></body></html>",
        escape(title)
    )
}

pub fn error_box(message: Option<&str>) -> String {
    message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        let html = page("<b>", "/activity", Some(("<i>@x.io", "tok")), "");
        assert!(!html.contains("<b>") && !html.contains("<i>@"));
    }
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

#[cfg(test)]
mod relative_tests {
    use super::relative_time;

    #[test]
    fn words() {
        assert_eq!(relative_time(0, 30_000), "just now");
        assert_eq!(relative_time(0, 180_000), "3 minutes ago");
        assert_eq!(relative_time(0, 3_600_000), "1 hour ago");
        assert_eq!(relative_time(0, 3 * 86_400_000), "3 days ago");
    }
}
