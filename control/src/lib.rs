//! ringmesh control: what drives a fleet of per-node proxies from one place.
//!
//! - [`source`]: a config read from one file, or from every `*.toml` file of a directory, with
//!   error lines mapped back to the file they came from.
//! - [`files`]: checks of the files a config refers to (certificates, keys, CA bundles, the admin
//!   token file). The proxy runs them on every reload; `ringmesh-control validate --check-files`
//!   runs them where the files live.
//! - [`diff`]: a readable summary of what changes between two configs.
//! - [`client`]: a small blocking HTTP/1.1 client for the admin API, over TCP or a unix socket.
//! - [`push`]: send one config to many proxies at once, with a result per proxy.
//! - [`watch`]: watch a file or directory, validate on change, push, retry with backoff.
//!
//! The `ringmesh-control` binary (`src/bin/ringmesh-control.rs`) is a thin command line over these.
//! The data plane depends on this crate only for [`files`]; nothing here touches a proxy's
//! internals, everything goes through its admin API.

pub mod client;
pub mod diff;
pub mod files;
pub mod push;
pub mod source;
pub mod watch;

use config_schema::{Config, ConfigError};

/// Parses and validates `text`, and when `check_files` is set, also checks that every file it
/// refers to can be read from here. Returns every error found.
pub fn validate(text: &str, check_files: bool) -> Result<Config, Vec<ConfigError>> {
    let config = config_schema::parse(text)?;
    if check_files {
        let errors = files::check(&config);
        if !errors.is_empty() {
            return Err(errors);
        }
    }
    Ok(config)
}
