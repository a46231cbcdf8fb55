//! The HTML shell of `/` and its two assets, embedded in the binary (`include_str!`): no file
//! is read at run time and nothing is fetched from another host. Every URL is relative, so the
//! page works behind a reverse proxy that serves it under a path prefix.
//!
//! The shell carries a server-rendered target table (readable without JavaScript); `status.js`
//! polls `api/v1/status` and draws the charts (hand-written SVG, no library).

use crate::runtime::{Readiness, StatusBoard};

pub const JS: &str = include_str!("assets/status.js");
pub const CSS: &str = include_str!("assets/status.css");
const SHELL: &str = include_str!("assets/status.html");

/// The policy sent with the page: scripts, styles and requests to this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often the page polls `api/v1/status`: the sampling interval, between 0.5 s and 5 s.
pub fn poll_ms(interval: std::time::Duration) -> u64 {
    (interval.as_millis() as u64).clamp(500, 5000)
}

/// The page, with the current target table filled in.
pub fn render(board: &StatusBoard, readiness: &Readiness, poll_ms: u64) -> String {
    let mut rows = String::new();
    for (name, t) in board.snapshot() {
        let up = match t.up {
            Some(true) => "<span class=up>up</span>",
            Some(false) => "<span class=down>down</span>",
            None => "pending",
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{up}</td><td>{}</td></tr>\n",
            esc(&name),
            esc(&t.url),
            esc(t.model.as_deref().unwrap_or("(discovering)")),
            esc(t.last_error.as_deref().unwrap_or("")),
        ));
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=5>no targets configured</td></tr>\n");
    }
    let ready = if readiness.is_ready() {
        "ready"
    } else {
        "starting"
    };
    SHELL
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{ready}}", ready)
        .replace("{{poll_ms}}", &poll_ms.to_string())
        .replace("{{rows}}", &rows)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_uses_relative_urls_only_and_escapes_target_fields() {
        let b = StatusBoard::default();
        b.sync_targets(&[("<x>".into(), "http://h/\"q".into(), None)]);
        let html = render(&b, &Readiness::default(), 2000);
        assert!(
            html.contains("&lt;x&gt;") && html.contains("&quot;q"),
            "{html}"
        );
        assert!(!html.contains("<x>"));
        for asset in [html.as_str(), JS, CSS] {
            // The SVG namespace is a name, not a URL that is fetched.
            let asset = asset
                .replace("http://www.w3.org/2000/svg", "")
                .replace("http://h/", "");
            for bad in [
                "src=\"/", "href=\"/", "http:", "https:", "fetch('/", "//cdn", "@import",
            ] {
                assert!(!asset.contains(bad), "absolute URL {bad:?} in an asset");
            }
        }
        assert!(html.contains("href=\"metrics\"") && html.contains("href=\"readyz\""));
        assert!(html.contains("data-poll-ms=\"2000\""));
    }
}
