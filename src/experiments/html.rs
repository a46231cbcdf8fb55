//! One self-contained HTML page per report: the run's target and parameters, the summary the
//! terminal prints, the plots inlined as SVG, and the JSON report embedded for exact numbers.
//! No script runs and nothing is fetched; every text from the server or the user is escaped.

use std::fmt::Write as _;

use super::report::Report;
use super::table::Printed;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// JSON safe inside a `<script type="application/json">` block: `<`, `>` and `&` become
/// `\u` escapes, which JSON parsers read back as the same characters.
pub fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The page of `report`: `summary` is what the terminal prints (its tables as `<table>`s), `svgs`
/// the plots (title, SVG text).
pub fn render(report: &Report, summary: &Printed, svgs: &[(String, String)]) -> String {
    let title = format!("vllm-sentinel {} — {}", report.kind, report.target.model);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n\
         <title>{}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         th,td{{border:1px solid #999;padding:.2em .5em;text-align:left}}pre{{overflow-x:auto}}</style>\n\
         </head>\n<body>\n<main>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    h.push_str("<section id=\"parameters\">\n<h2>Target and parameters</h2>\n<table>\n");
    h.push_str("<caption>Run parameters</caption>\n<thead><tr><th scope=\"col\">Parameter</th><th scope=\"col\">Value</th></tr></thead>\n<tbody>\n");
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(
            h,
            "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
            escape(k),
            escape(v)
        );
    };
    row("target", &report.target.url);
    row("model", &report.target.model);
    row("endpoint", &report.target.endpoint);
    if let Some(m) = report.target.max_model_len {
        row("max_model_len", &m.to_string());
    }
    for (k, v) in &report.settings {
        row(k, &v.to_string());
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
    h.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n");
    if report.partial {
        let _ = writeln!(
            h,
            "<p><strong>Partial report:</strong> {}</p>",
            escape(report.partial_reason.as_deref().unwrap_or("interrupted"))
        );
    }
    h.push_str(&summary.to_html());
    if !report.notes.is_empty() {
        h.push_str("<ul>\n");
        for n in &report.notes {
            let _ = writeln!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n<section id=\"plots\">\n<h2>Plots</h2>\n");
    for (t, svg) in svgs {
        let _ = writeln!(
            h,
            "<figure role=\"img\" aria-label=\"{}\">\n{}\n<figcaption>{}</figcaption>\n</figure>",
            escape(t),
            inline_svg(svg, t),
            escape(t)
        );
    }
    h.push_str(
        "</section>\n<section id=\"report-json\">\n<details>\n<summary>JSON report</summary>\n",
    );
    let json = serde_json::to_string_pretty(report).unwrap_or_else(|_| "{}".to_string());
    let _ = writeln!(
        h,
        "<script type=\"application/json\" id=\"report\">{}</script>\n<pre>{}</pre>",
        script_json(&json),
        escape(&json)
    );
    h.push_str("</details>\n</section>\n</main>\n</body>\n</html>\n");
    h
}

/// An SVG file's text made inline: the XML declaration dropped, and a `<title>` added.
fn inline_svg(svg: &str, title: &str) -> String {
    let body = match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => return String::new(),
    };
    match body.find('>') {
        Some(j) => format!(
            "{}<title>{}</title>{}",
            &body[..=j],
            escape(title),
            &body[j + 1..]
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::report::TargetInfo;

    const HOSTILE: &str = "</script><img src=x onerror=alert(1)>";

    fn report() -> Report {
        let mut r = Report::new(
            "bench",
            TargetInfo {
                url: "http://127.0.0.1:8000".into(),
                model: HOSTILE.into(),
                endpoint: "completions".into(),
                max_model_len: Some(4096),
            },
        );
        r.set("requests", 3);
        r.notes.push(format!("server said {HOSTILE}"));
        r
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let page = render(&report(), &Printed::text(HOSTILE), &[]);
        assert!(!page.contains("<img"), "{page}");
        assert_eq!(page.matches("</script>").count(), 1, "{page}");
        assert!(page.contains("&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"));
        let start = page.find("id=\"report\">").map(|i| i + 12).unwrap_or(0);
        let end = page[start..].find("</script>").map_or(0, |e| start + e);
        let back: serde_json::Value =
            serde_json::from_str(&page[start..end]).unwrap_or(serde_json::Value::Null);
        assert_eq!(back["target"]["model"], HOSTILE);
    }

    #[test]
    fn every_section_is_present() {
        let svg = "<?xml version=\"1.0\"?>\n<svg width=\"10\" height=\"10\" xmlns=\"http://www.w3.org/2000/svg\"><rect/></svg>";
        let page = render(
            &report(),
            &Printed::text("summary table"),
            &[("TTFT".into(), svg.into())],
        );
        for needle in [
            "<html lang=\"en\">",
            "<title>",
            "id=\"parameters\"",
            "<th scope=\"col\">",
            "<th scope=\"row\">requests</th><td>3</td>",
            "id=\"summary\"",
            "summary table",
            "id=\"plots\"",
            "<title>TTFT</title><rect/>",
            "<details>",
            "<script type=\"application/json\" id=\"report\">",
        ] {
            assert!(page.contains(needle), "missing {needle}: {page}");
        }
        assert!(!page.contains("<?xml"));
        assert!(!page.contains("src=\"http"));
    }
}
