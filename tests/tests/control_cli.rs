//! `ringmesh-control`, black box: `validate` and `diff` on files and directories; `push` to
//! several proxies at once with one down reports exactly which applied the config; `watch`
//! pushes every valid change to every proxy and reports the generation each acknowledged.
//!
//! Requires the binaries (`cargo build --bins`).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};

use support::{Admin, HttpUpstream, TOKEN, get};
use tests::wait::PATIENCE;
use tests::{Driver, Proxy, wait_until};

tests::both_drivers!(
    push_to_three_proxies_with_one_down_reports_each,
    a_config_a_proxy_rejects_is_reported_with_its_errors,
    watch_keeps_every_proxy_on_the_latest_valid_config,
);

fn config(app: &HttpUpstream, body: &str) -> String {
    format!(
        r#"[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[[listeners]]
name = "web"
address = "127.0.0.1:0"
protocol = "http"

[[clusters]]
name = "app"
endpoints = ["{app}"]

[[virtual_hosts]]
name = "default"
domains = ["*"]

[[virtual_hosts.routes]]
match.path_prefix = "/"
{body}
"#,
        app = app.address()
    )
}

fn control(args: &[&str]) -> Output {
    Command::new(support::control_bin())
        .args(args)
        .env("RINGMESH_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("run ringmesh-control")
}

fn target(proxy: &Proxy) -> String {
    format!("http://{}", proxy.admin_address())
}

/// An admin address where nothing listens.
fn down() -> String {
    let address: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port");
    format!("http://{address}")
}

/// The line of `stdout` about `target`.
fn line_of<'a>(stdout: &'a str, target: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{target} ")))
        .unwrap_or_else(|| panic!("no line for {target} in:\n{stdout}"))
}

fn push_to_three_proxies_with_one_down_reports_each(driver: Driver) {
    let app = HttpUpstream::http("app");
    let first = config(&app, "cluster = \"app\"");
    let one = Proxy::start(&first, driver, 1);
    let two = Proxy::start(&first, driver, 2);
    let gone = down();
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        config(
            &app,
            "direct_response = { status = 200, body = \"pushed\" }",
        ),
    )
    .expect("write");

    let output = control(&[
        "push",
        file.to_str().expect("utf-8"),
        "--to",
        &target(&one),
        "--to",
        &gone,
        "--to",
        &target(&two),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "one proxy is down: {stdout}");
    for proxy in [&one, &two] {
        let line = line_of(&stdout, &target(proxy));
        assert!(line.contains(" ok ") && line.contains(" 2 "), "{line}");
        assert_eq!(proxy.generation(), 2);
        assert_eq!(get(proxy.listener("web"), "/").expect("get").body, "pushed");
    }
    let line = line_of(&stdout, &gone);
    assert!(line.contains("unreachable"), "{line}");
    assert!(
        stdout.contains("2 of 3 proxies applied the config"),
        "{stdout}"
    );

    // All up: exit 0. A wrong token: each proxy says so.
    let all = [
        "push",
        file.to_str().expect("utf-8"),
        "--to",
        &target(&one),
        "--to",
        &target(&two),
    ];
    let output = control(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let mut wrong = all.to_vec();
    wrong.extend(["--token", "wrong"]);
    let output = control(&wrong);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        line_of(&stdout, &target(&one)).contains("HTTP 401"),
        "{stdout}"
    );

    // An invalid config is not pushed at all.
    std::fs::write(&file, "[[listeners]]\nname = 1\n").expect("write");
    let output = control(&all);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fleet.toml:2:"), "{stderr}");
    assert_eq!(one.generation(), 3);
    assert_eq!(two.generation(), 3);
}

fn a_config_a_proxy_rejects_is_reported_with_its_errors(driver: Driver) {
    let app = HttpUpstream::http("app");
    let proxy = Proxy::start(&config(&app, "cluster = \"app\""), driver, 1);
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("fleet.toml");
    // Valid here (files are not checked without --check-files), but the proxy checks them.
    let text = config(&app, "cluster = \"app\"").replace(
        &format!("token = \"{TOKEN}\""),
        "token_file = \"/nonexistent/admin-token\"",
    );
    assert!(text.contains("token_file"));
    std::fs::write(&file, &text).expect("write");
    let output = control(&[
        "push",
        file.to_str().expect("utf-8"),
        "--to",
        &target(&proxy),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        line_of(&stdout, &target(&proxy)).contains("rejected"),
        "{stdout}"
    );
    assert!(stdout.contains("admin.token_file"), "{stdout}");
    assert_eq!(proxy.generation(), 1);
    // With --check-files it is caught before pushing.
    let output = control(&["validate", file.to_str().expect("utf-8"), "--check-files"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
}

fn watch_keeps_every_proxy_on_the_latest_valid_config(driver: Driver) {
    let app = HttpUpstream::http("app");
    let a = Proxy::start(&config(&app, "cluster = \"app\""), driver, 1);
    let b = Proxy::start(&config(&app, "cluster = \"app\""), driver, 2);
    let dir = tempfile::tempdir().expect("temporary directory");
    // A directory: the config is split in two files.
    let whole = config(&app, "direct_response = { status = 200, body = \"v1\" }");
    let (head, tail) = whole.split_at(whole.find("[[clusters]]").expect("clusters"));
    std::fs::write(dir.path().join("10-listeners.toml"), head).expect("write");
    std::fs::write(dir.path().join("20-routes.toml"), tail).expect("write");
    let log = dir.path().join("watch.log");
    let mut watch = Command::new(support::control_bin())
        .args(["watch", dir.path().to_str().expect("utf-8")])
        .args(["--to", &target(&a), "--to", &target(&b)])
        .args(["--interval-ms", "50", "--settle-ms", "100"])
        .env("RINGMESH_ADMIN_TOKEN", TOKEN)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("run ringmesh-control watch");
    let body_is = |proxy: &Proxy, want: &str| {
        wait_until(PATIENCE, format!("{want} from {}", target(proxy)), || {
            let body = get(proxy.listener("web"), "/").map(|r| r.body);
            match body {
                Ok(body) if body == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
    };
    // The current content is pushed at start.
    body_is(&a, "v1");
    body_is(&b, "v1");

    // An invalid change is reported and not pushed.
    std::fs::write(
        dir.path().join("20-routes.toml"),
        "[[clusters]]\nname = 7\n",
    )
    .expect("write");
    wait_until(PATIENCE, "the invalid change to be reported", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("config changed but is invalid") {
            Ok(())
        } else {
            Err(text)
        }
    });
    assert_eq!((a.generation(), b.generation()), (2, 2));

    // A valid change reaches both.
    std::fs::write(
        dir.path().join("20-routes.toml"),
        tail.replace("\"v1\"", "\"v2\""),
    )
    .expect("write");
    body_is(&a, "v2");
    body_is(&b, "v2");
    wait_until(PATIENCE, "both acknowledgements to be reported", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let acked = |proxy: &Proxy| {
            text.contains(&format!(
                "version 2: {} acknowledged generation 3",
                target(proxy)
            ))
        };
        if acked(&a) && acked(&b) && text.contains("version 2: 2 of 2 proxies acknowledged") {
            Ok(())
        } else {
            Err(text)
        }
    });
    let _ = watch.kill();
    let _ = watch.wait();
}

/// `validate` and `diff` need no proxy.
#[test]
fn validate_and_diff_read_files_and_directories() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let old = dir.path().join("old.toml");
    let new = dir.path().join("new.toml");
    let base = "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:8080\"\nprotocol = \"http\"\n\n[[clusters]]\nname = \"app\"\nendpoints = [\"127.0.0.1:9000\"]\n";
    std::fs::write(&old, base).expect("write");
    std::fs::write(
        &new,
        format!(
            "{}\n[[clusters]]\nname = \"db\"\nendpoints = [\"127.0.0.1:5432\"]\n",
            base.replace("8080", "8081")
        ),
    )
    .expect("write");
    let output = control(&["validate", old.to_str().expect("utf-8")]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (1 listeners"));

    let output = control(&[
        "diff",
        old.to_str().expect("utf-8"),
        new.to_str().expect("utf-8"),
    ]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("listeners: 0 added, 0 removed, 1 changed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("address: 127.0.0.1:8080 -> 127.0.0.1:8081"),
        "{stdout}"
    );
    assert!(
        stdout.contains("clusters: 1 added, 0 removed, 0 changed"),
        "{stdout}"
    );
    assert!(stdout.contains("  + db"), "{stdout}");

    std::fs::write(&new, "[[clusters]]\nname = 5\n").expect("write");
    let output = control(&["validate", new.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("new.toml:"), "{stderr}");
}
