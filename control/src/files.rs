//! Checks of the files a config refers to: certificate chains, private keys, CA bundles, and the
//! admin token file; and resolving the admin token ([`admin_token`]), which may live in a file or
//! an environment variable.
//!
//! Validation (`config_schema::parse`) is pure and cannot see the file system, so a config that
//! names a missing file validates. The proxy runs [`check`] on every reload, before anything is
//! published, so such a config is rejected whole with the TOML path and line of each missing
//! file. Relative paths are relative to the proxy's working directory.
//!
//! The certificates and keys of `[listeners.tls]` and `[clusters.tls]` are checked here for
//! existence; that they parse and that each key fits its certificate is checked when the proxy
//! compiles the snapshot (`dataplane::tls::config`); `[identity]`'s files are checked for
//! existence here and loaded (and checked as an SVID with its key and bundle) by
//! `dataplane::identity::Store::open` when the reload path opens the store.

use std::path::Path;

use config_schema::{Config, ConfigError};

/// A file named by the config: its TOML path, what it is, and the path on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// TOML path of the value naming the file (`listeners[0].tls.cert`).
    pub at: String,
    /// What the file holds, for messages.
    pub kind: &'static str,
    /// The file.
    pub file: String,
}

/// Every file `config` refers to, in config order.
pub fn referenced(config: &Config) -> Vec<FileRef> {
    let spec = &config.spec;
    let mut refs = Vec::new();
    let mut add = |at: String, kind: &'static str, file: Option<&String>| {
        if let Some(file) = file {
            refs.push(FileRef {
                at,
                kind,
                file: file.clone(),
            });
        }
    };
    let admin = &spec.admin;
    add(
        "admin.token_file".into(),
        "admin token file",
        admin.token_file.as_ref(),
    );
    if let Some(identity) = &spec.identity {
        add("identity.cert".into(), "certificate", Some(&identity.cert));
        add("identity.key".into(), "private key", Some(&identity.key));
        add(
            "identity.ca_bundle".into(),
            "CA bundle",
            Some(&identity.ca_bundle),
        );
        for (i, bundle) in identity.trust_bundles.iter().enumerate() {
            add(
                format!("identity.trust_bundles[{i}].ca"),
                "CA bundle",
                Some(&bundle.ca),
            );
        }
    }
    for (i, listener) in spec.listeners.iter().enumerate() {
        if let Some(tls) = &listener.tls {
            let at = format!("listeners[{i}].tls");
            add(format!("{at}.cert"), "certificate", tls.cert.as_ref());
            add(format!("{at}.key"), "private key", tls.key.as_ref());
            for (j, entry) in tls.certificates.iter().enumerate() {
                let at = format!("{at}.certificates[{j}]");
                add(format!("{at}.cert"), "certificate", Some(&entry.cert));
                add(format!("{at}.key"), "private key", Some(&entry.key));
            }
            add(
                format!("{at}.client_ca"),
                "CA bundle",
                tls.client_ca.as_ref(),
            );
        }
    }
    for (i, cluster) in spec.clusters.iter().enumerate() {
        if let Some(tls) = &cluster.tls {
            let at = format!("clusters[{i}].tls");
            add(format!("{at}.ca"), "CA bundle", tls.ca.as_ref());
            add(format!("{at}.cert"), "certificate", tls.cert.as_ref());
            add(format!("{at}.key"), "private key", tls.key.as_ref());
        }
    }
    refs
}

/// One error, located at the value that names it, for every referenced file that cannot be read.
pub fn check(config: &Config) -> Vec<ConfigError> {
    referenced(config)
        .into_iter()
        .filter_map(|r| {
            readable(Path::new(&r.file))
                .err()
                .map(|why| config.error_at(&r.at, format!("{} {:?} {why}", r.kind, r.file)))
        })
        .collect()
}

/// Ok when `path` is a regular file this process can open for reading.
fn readable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("does not exist".into()),
        Err(e) => Err(format!("cannot be read: {e}")),
        Ok(meta) if !meta.is_file() => Err("is not a regular file".into()),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("cannot be read: {e}")),
    }
}

/// The admin token of `config`: inline, from an environment variable, or from a file (trailing
/// whitespace trimmed). An unset variable, an unreadable file or an empty token is an error at
/// the key that names it, so such a config is rejected rather than silently locking the admin
/// API (or leaving it open).
pub fn admin_token(config: &Config) -> Result<Option<String>, ConfigError> {
    let admin = &config.spec.admin;
    let (at, token) = if let Some(token) = &admin.token {
        ("admin.token", token.clone())
    } else if let Some(var) = &admin.token_env {
        match std::env::var(var) {
            Ok(token) => ("admin.token_env", token),
            Err(e) => {
                return Err(config.error_at(
                    "admin.token_env",
                    format!("environment variable {var}: {e}"),
                ));
            }
        }
    } else if let Some(file) = &admin.token_file {
        match std::fs::read_to_string(file) {
            Ok(text) => ("admin.token_file", text.trim_end().to_owned()),
            Err(e) => {
                return Err(
                    config.error_at("admin.token_file", format!("cannot read {file:?}: {e}"))
                );
            }
        }
    } else {
        return Ok(None);
    };
    if token.trim().is_empty() {
        return Err(config.error_at(at, "the admin token is empty"));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_reported_at_their_toml_path_and_line() {
        let present = std::env::temp_dir().join(format!("ringmesh-files-{}", std::process::id()));
        std::fs::write(&present, "pem").expect("write");
        let text = r#"
[admin]
token_file = "/nonexistent/token"

[[listeners]]
name = "tls"
address = "127.0.0.1:0"
protocol = "http"

[[clusters]]
name = "a"
endpoints = ["127.0.0.1:1"]
"#;
        let mut config = config_schema::parse(text).expect("valid");
        // TLS settings added to the parsed spec (so that `client_ca`, still rejected by `parse`,
        // could be set too). They have no line of their own: errors about them point at their
        // listener or cluster.
        config.spec.listeners[0].tls = Some(config_schema::ListenerTlsSpec {
            mode: config_schema::TlsMode::Terminate,
            cert: Some(present.display().to_string()),
            key: Some("/nonexistent/key.pem".to_owned()),
            certificates: Vec::new(),
            min_version: config_schema::TlsVersion::Tls12,
            client_ca: None,
            require_client_cert: false,
            allowed_spiffe_ids: Vec::new(),
            alpn: Vec::new(),
            sni_routes: std::collections::BTreeMap::new(),
        });
        config.spec.clusters[0].tls = Some(config_schema::UpstreamTlsSpec {
            sni: None,
            ca: Some("/nonexistent/ca.pem".to_owned()),
            cert: None,
            key: None,
            expected_spiffe_ids: Vec::new(),
            alpn: Vec::new(),
        });
        assert_eq!(referenced(&config).len(), 4);
        let errors = check(&config);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].path, "admin.token_file");
        assert_eq!(errors[0].line, 3);
        assert!(errors[0].message.contains("admin token file"));
        assert!(errors[0].message.contains("does not exist"));
        assert_eq!(errors[1].path, "listeners[0].tls.key");
        assert_eq!(errors[1].line, 5);
        assert!(errors[1].message.contains("private key"));
        assert_eq!(errors[2].path, "clusters[0].tls.ca");
        assert_eq!(errors[2].line, 10);
        let _ = std::fs::remove_file(&present);
    }

    #[test]
    fn federated_trust_bundles_are_checked_files() {
        let mut config = config_schema::parse("").expect("valid");
        // Set on the parsed spec: `parse` would want a whole config around it.
        config.spec.identity = Some(config_schema::IdentitySpec {
            trust_domain: "cluster.local".into(),
            cert: "/nonexistent/svid.pem".into(),
            key: "/nonexistent/svid-key.pem".into(),
            ca_bundle: "/nonexistent/bundle.pem".into(),
            trust_bundles: vec![config_schema::TrustBundleSpec {
                trust_domain: "partner.example".into(),
                ca: "/nonexistent/partner.pem".into(),
            }],
            service_accounts: Vec::new(),
        });
        let errors = check(&config);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(errors[3].path, "identity.trust_bundles[0].ca");
        assert!(errors[3].message.contains("CA bundle"));
    }

    #[test]
    fn a_directory_is_not_a_certificate() {
        let text = format!(
            "[admin]\ntoken_file = \"{}\"\n",
            std::env::temp_dir().display()
        );
        let config = config_schema::parse(&text).expect("valid");
        let errors = check(&config);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "admin.token_file");
        assert!(errors[0].message.contains("not a regular file"));
    }

    #[test]
    fn admin_tokens_resolve_from_each_source() {
        let parse = |text: &str| config_schema::parse(text).expect("valid");
        assert_eq!(
            admin_token(&parse("[admin]\ntoken = \"t1\"\n")).expect("ok"),
            Some("t1".into())
        );
        assert_eq!(admin_token(&parse("")).expect("ok"), None);
        let file = std::env::temp_dir().join(format!("ringmesh-token-{}", std::process::id()));
        std::fs::write(&file, "t2\n").expect("write");
        let text = format!("[admin]\ntoken_file = \"{}\"\n", file.display());
        assert_eq!(admin_token(&parse(&text)).expect("ok"), Some("t2".into()));
        std::fs::write(&file, "  \n").expect("write");
        let error = admin_token(&parse(&text)).expect_err("empty");
        assert_eq!(error.path, "admin.token_file");
        assert_eq!(error.line, 2);
        let _ = std::fs::remove_file(&file);
        let error = admin_token(&parse(
            "[admin]\ntoken_env = \"RINGMESH_TEST_SURELY_UNSET_VARIABLE\"\n",
        ))
        .expect_err("unset");
        assert_eq!(error.path, "admin.token_env");
    }
}
