//! Third-party HTTP servers as upstreams, and curl for transfers too big for a fixed deadline.
//!
//! Each server is a [`PyServer`]: its Python program binds `127.0.0.1:0`, prints `listening PORT`
//! and one event line per thing it saw; dropping it kills it, and its output is printed when the
//! test is failing.
//!
//! - [`uvicorn`]: uvicorn with its h11 implementation (`--http h11`, HTTP/1.1 only) serving the
//!   ASGI app `tests/python/asgi_echo.py`: `/echo` streams each request chunk back as it arrives,
//!   `/hang` reads the request and never answers.
//! - [`hypercorn`]: the same app under hypercorn, which speaks h2c with prior knowledge (and
//!   HTTP/1.1).
//! - [`aiohttp`]: the aiohttp app `tests/python/aiohttp_app.py` (HTTP/1.1): early answers that
//!   ignore the request body, a cookie echo, an upload digest reporting the `Expect` it saw, and
//!   downloads.
//! - [`h2_abort_client`]: a Python `h2` client that abandons its request when told to.
//! - [`curl_transfer`]: curl with a stall limit instead of a deadline.

use crate::h2::PyServer;
use crate::http::{Curl, curl};

/// uvicorn `--http h11` serving `asgi_echo.py`.
pub fn uvicorn() -> PyServer {
    PyServer::start("asgi_echo.py", &["uvicorn"])
}

/// hypercorn serving `asgi_echo.py` (h2c with prior knowledge, and HTTP/1.1).
pub fn hypercorn() -> PyServer {
    PyServer::start("asgi_echo.py", &["hypercorn"])
}

/// The aiohttp app `aiohttp_app.py`.
pub fn aiohttp() -> PyServer {
    PyServer::start("aiohttp_app.py", &[])
}

/// `h2_abort.py`: one POST to `path` on a new h2c connection to `port` declaring `body_size`
/// bytes (0: no body) and uploading `send` of them, printing what it sees; `tell("reset")` resets
/// the stream, and `tell("close")` closes the connection.
pub fn h2_abort_client(port: u16, path: &str, body_size: u64, send: u64) -> PyServer {
    PyServer::steered(
        "h2_abort.py",
        &[
            &port.to_string(),
            "--path",
            path,
            "--body-size",
            &body_size.to_string(),
            "--send-only",
            &send.to_string(),
        ],
    )
}

/// curl arguments that fail a transfer moving less than 1 byte per second over 20 seconds — a
/// deadlock fails in about 20 s however large the transfer — with an outer bound for a slow,
/// shared machine (it replaces the 60 s of [`curl`]).
pub const STALL_LIMIT: [&str; 6] = [
    "--speed-limit",
    "1",
    "--speed-time",
    "20",
    "--max-time",
    "600",
];

/// [`curl`] with [`STALL_LIMIT`] in front of `args`.
pub fn curl_transfer<I, S>(args: I) -> Curl
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut all: Vec<std::ffi::OsString> = STALL_LIMIT.iter().map(Into::into).collect();
    all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
    curl(all)
}
