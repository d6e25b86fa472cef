//! Pushing one config to many proxies at once (`PUT /config` on each admin API), with one result
//! per proxy.
//!
//! Targets are independent: each gets its own thread, and one that is down, slow or refuses the
//! config does not hold up or change the result of another.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use config_schema::ConfigError;

use crate::client::{self, Request, Target};

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Bearer token for the admin API.
    pub token: Option<String>,
    /// Timeout per request (connect, write, read each).
    pub timeout: Duration,
}

/// What one proxy made of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: every worker acknowledged `generation`, except those in `pending_workers`, which
    /// had not yet when the proxy answered.
    Applied {
        /// The generation now serving.
        generation: u64,
        /// Workers that had not acknowledged in time (normally none).
        pending_workers: Vec<u64>,
    },
    /// The proxy rejected the config; it keeps serving the previous one.
    Rejected(Vec<ConfigError>),
    /// The proxy answered with another error (wrong token, refused host, ...).
    Failed {
        /// HTTP status.
        status: u16,
        /// The answer, shortened.
        message: String,
    },
    /// No answer: connection refused, timeout, broken response.
    Unreachable(String),
}

impl Outcome {
    /// True when the proxy runs the pushed config.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied { .. })
    }
}

/// One proxy's result.
#[derive(Debug, Clone)]
pub struct PushResult {
    /// The proxy.
    pub target: Target,
    /// What happened.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// Pushes `config` to every target concurrently; results come back in target order.
pub fn push_all(targets: &[Target], config: &str, options: &PushOptions) -> Vec<PushResult> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = targets
            .iter()
            .map(|target| scope.spawn(move || push_one(target, config, options)))
            .collect();
        threads
            .into_iter()
            .zip(targets)
            .map(|(thread, target)| {
                thread.join().unwrap_or_else(|_| PushResult {
                    target: target.clone(),
                    outcome: Outcome::Unreachable("push thread panicked".into()),
                    elapsed: Duration::ZERO,
                })
            })
            .collect()
    })
}

/// Pushes `config` to one target.
pub fn push_one(target: &Target, config: &str, options: &PushOptions) -> PushResult {
    let started = Instant::now();
    let request = Request {
        method: "PUT",
        path: "/config",
        body: Some(config.as_bytes()),
        token: options.token.as_deref(),
        timeout: options.timeout,
    };
    let outcome = match client::send(target, &request) {
        Ok(response) => interpret(response.status, &response.body),
        Err(e) => Outcome::Unreachable(e.to_string()),
    };
    PushResult {
        target: target.clone(),
        outcome,
        elapsed: started.elapsed(),
    }
}

/// Reads an admin API answer to `PUT /config` or `POST /reload`.
pub fn interpret(status: u16, body: &str) -> Outcome {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    match (status, json) {
        (200..=299, Some(json)) if json["generation"].is_u64() => Outcome::Applied {
            generation: json["generation"].as_u64().unwrap_or_default(),
            pending_workers: json["pending_workers"]
                .as_array()
                .map(|a| a.iter().filter_map(|w| w.as_u64()).collect())
                .unwrap_or_default(),
        },
        (400, Some(json)) if json["errors"].is_array() => Outcome::Rejected(
            json["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| ConfigError {
                    path: e["path"].as_str().unwrap_or_default().to_owned(),
                    line: e["line"].as_u64().unwrap_or_default() as usize,
                    column: e["column"].as_u64().unwrap_or_default() as usize,
                    message: e["message"].as_str().unwrap_or_default().to_owned(),
                })
                .collect(),
        ),
        (status, _) => Outcome::Failed {
            status,
            message: shorten(body.trim(), 200),
        },
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// The results as a table: one line per target, then the errors of rejected configs.
pub fn render(results: &[PushResult]) -> String {
    let width = results
        .iter()
        .map(|r| r.target.to_string().len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:<width$}  {:<11}  {:>10}  DETAIL\n",
        "TARGET", "RESULT", "GENERATION"
    );
    for r in results {
        let (result, generation, detail) = match &r.outcome {
            Outcome::Applied {
                generation,
                pending_workers,
            } => (
                "ok",
                generation.to_string(),
                if pending_workers.is_empty() {
                    format!("all workers acknowledged in {} ms", r.elapsed.as_millis())
                } else {
                    format!("workers {pending_workers:?} had not acknowledged yet")
                },
            ),
            Outcome::Rejected(errors) => (
                "rejected",
                "-".into(),
                format!("{} error(s); previous config still serving", errors.len()),
            ),
            Outcome::Failed { status, message } => {
                ("failed", "-".into(), format!("HTTP {status}: {message}"))
            }
            Outcome::Unreachable(why) => ("unreachable", "-".into(), why.clone()),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {result:<11}  {generation:>10}  {detail}",
            r.target.to_string()
        );
    }
    for r in results {
        if let Outcome::Rejected(errors) = &r.outcome {
            let _ = writeln!(out, "\n{} rejected the config:", r.target);
            for e in errors {
                let _ = writeln!(out, "  {e}");
            }
        }
    }
    let applied = results.iter().filter(|r| r.outcome.is_applied()).count();
    let _ = writeln!(
        out,
        "\n{applied} of {} proxies applied the config",
        results.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_interpreted() {
        assert_eq!(
            interpret(200, "{\"generation\": 4}"),
            Outcome::Applied {
                generation: 4,
                pending_workers: vec![]
            }
        );
        assert_eq!(
            interpret(202, "{\"generation\": 5, \"pending_workers\": [1]}"),
            Outcome::Applied {
                generation: 5,
                pending_workers: vec![1]
            }
        );
        let rejected = interpret(
            400,
            r#"{"errors": [{"path": "clusters[0]", "line": 3, "column": 1, "message": "bad"}]}"#,
        );
        let Outcome::Rejected(errors) = rejected else {
            panic!("{rejected:?}")
        };
        assert_eq!(errors[0].line, 3);
        assert_eq!(errors[0].to_string(), "3:1: clusters[0]: bad");
        assert_eq!(
            interpret(401, "token required\n"),
            Outcome::Failed {
                status: 401,
                message: "token required".into()
            }
        );
    }

    #[test]
    fn a_proxy_that_is_down_is_reported_and_others_are_not_held_up() {
        // A port that refuses: bind, note the address, close.
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let targets = [Target::parse(&refused.to_string()).expect("target")];
        let options = PushOptions {
            token: None,
            timeout: Duration::from_secs(5),
        };
        let results = push_all(&targets, "", &options);
        assert!(matches!(results[0].outcome, Outcome::Unreachable(_)));
        let table = render(&results);
        assert!(table.contains("unreachable"), "{table}");
        assert!(table.contains("0 of 1 proxies applied"), "{table}");
    }
}
