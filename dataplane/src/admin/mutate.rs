//! The endpoints that change the process: `POST /reload`, `PUT /config`, `POST /drain`.
//!
//! Each needs its own method (so a `GET`, which browsers and crawlers send freely, never changes
//! anything) and the bearer token (`auth`). The admin thread does not apply configs itself: it
//! asks the control thread, the only snapshot writer, and answers once the control thread says
//! every worker runs the new generation. Every call is logged with its client and outcome.

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::auth::{self, Denied};
use super::{Admin, Request, Response};
use crate::reload::{ConfigSource, ControlRequest, ReloadOutcome};

/// Upper bound on waiting for the control thread (which itself waits at most
/// `reload::ACKNOWLEDGE_TIMEOUT` for the workers).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `path` is one of the mutating endpoints.
pub(super) fn is_mutating(path: &str) -> bool {
    matches!(path, "/reload" | "/config" | "/drain")
}

/// Serves a mutating endpoint.
pub(super) async fn handle(admin: &Admin, request: &Request, path: &str) -> Response {
    let method = if path == "/config" { "PUT" } else { "POST" };
    if request.method != method {
        return Response::text(405, &format!("{path} needs {method}\n"))
            .with_header("allow", method);
    }
    let token = admin.shared.admin_token();
    if let Err(denied) = auth::check_bearer(token.as_deref(), request.authorization.as_deref()) {
        warn!(peer = %request.peer, endpoint = path, reason = ?denied, "admin: refused a mutating request");
        return match denied {
            Denied::NoTokenConfigured => Response::text(
                403,
                "mutating endpoints are disabled: configure admin.token, admin.token_env or admin.token_file\n",
            ),
            Denied::Missing | Denied::Wrong => {
                Response::text(401, "a valid bearer token is required\n")
                    .with_header("www-authenticate", "Bearer")
            }
        };
    }
    match path {
        "/reload" => reload(admin, request, ConfigSource::File, "admin POST /reload").await,
        "/config" => match String::from_utf8(request.body.clone()) {
            Ok(text) if !text.trim().is_empty() => {
                reload(
                    admin,
                    request,
                    ConfigSource::Text(text),
                    "admin PUT /config",
                )
                .await
            }
            Ok(_) => body_error("the body is empty: send the whole config as the request body"),
            Err(_) => body_error("the body is not UTF-8 text"),
        },
        _ => {
            info!(peer = %request.peer, "admin: POST /drain");
            let sent = admin.control.send(ControlRequest::Shutdown {
                origin: "admin POST /drain",
            });
            match sent {
                Ok(()) => Response::json_with_status(202, &json!({ "draining": true })),
                Err(_) => Response::text(503, "the control thread is not running\n"),
            }
        }
    }
}

async fn reload(
    admin: &Admin,
    request: &Request,
    source: ConfigSource,
    origin: &'static str,
) -> Response {
    let (reply, answer) = flume::bounded(1);
    let asked = admin.control.send(ControlRequest::Reload {
        source,
        origin,
        reply: Some(reply),
    });
    if asked.is_err() {
        return Response::text(503, "the control thread is not running\n");
    }
    let outcome = monoio::time::timeout(CONTROL_TIMEOUT, answer.recv_async()).await;
    match outcome {
        Ok(Ok(ReloadOutcome::Applied {
            generation,
            pending_workers,
        })) => {
            info!(peer = %request.peer, origin, generation, "admin: config applied");
            if pending_workers.is_empty() {
                Response::json(json!({ "generation": generation }))
            } else {
                Response::json_with_status(
                    202,
                    &json!({ "generation": generation, "pending_workers": pending_workers }),
                )
            }
        }
        Ok(Ok(ReloadOutcome::Rejected(errors))) => {
            info!(peer = %request.peer, origin, errors = errors.len(), "admin: config rejected");
            Response::json_with_status(400, &json!({ "errors": errors }))
        }
        Ok(Err(_)) | Err(_) => Response::text(503, "the control thread did not answer\n"),
    }
}

fn body_error(message: &str) -> Response {
    Response::json_with_status(
        400,
        &json!({ "errors": [{ "path": "", "line": 0, "column": 0, "message": message }] }),
    )
}
