//! One way to print an error with its causes, for every message a user reads (CLI errors, log
//! lines, the `error` of a request record).
//!
//! `Display` of most transport errors says only the outermost layer ("error sending request"),
//! while the reason a user can act on is at the bottom ("invalid peer certificate:
//! UnknownIssuer", "Connection refused"). reqwest's error also carries the URL, which can hold
//! credentials; [`reqwest`] leaves it out.

use std::error::Error;

/// Sources followed at most (a cycle or a very deep chain stops here).
const MAX_DEPTH: usize = 8;

/// `error: cause: cause …`, skipping a cause whose text repeats the previous one.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    append_sources(&mut s, e.source());
    s
}

/// A reqwest error as `class: cause: cause …`: the class from what reqwest knows (connect,
/// timeout, body, request), the causes from its sources, never the URL.
pub fn reqwest(e: &reqwest::Error) -> String {
    let mut s = String::from(match () {
        _ if e.is_connect() => "connect error",
        _ if e.is_timeout() => "timed out",
        _ if e.is_body() => "error reading the body",
        _ if e.is_request() => "request error",
        _ => "HTTP error",
    });
    append_sources(&mut s, e.source());
    s
}

fn append_sources(s: &mut String, mut cur: Option<&dyn Error>) {
    let mut last = String::new();
    for _ in 0..MAX_DEPTH {
        let Some(c) = cur else { break };
        let text = c.to_string();
        if !text.is_empty() && text != last && !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        last = text;
        cur = c.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn the_innermost_cause_is_shown_and_repeats_are_skipped() {
        let e = E(
            "error sending request",
            Some(Box::new(E(
                "client error (Connect)",
                Some(Box::new(E(
                    "invalid peer certificate: UnknownIssuer",
                    Some(Box::new(E("invalid peer certificate: UnknownIssuer", None))),
                ))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_says_so_without_the_url() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let err = reqwest::Client::new()
            .get(format!("http://user:secret@{addr}/v1/models"))
            .send()
            .await
            .expect_err("nothing listens");
        let s = reqwest(&err);
        assert!(s.starts_with("connect error"), "{s}");
        assert!(s.to_lowercase().contains("refused"), "{s}");
        assert!(
            !s.contains("secret") && !s.contains(&addr.to_string()),
            "{s}"
        );
    }
}
