//! `ringmesh node rules`: the printed ruleset passes `nft -c` and says what the config says;
//! `--apply` and `--remove` are idempotent in a fresh namespace; and, in a two-node [`Testbed`]
//! with the rules applied, the capture works without ringmesh's listeners: a pod's connection to
//! a pod on the other node reaches a stand-in listener on the outbound port, which reads the
//! original destination (`SO_ORIGINAL_DST` for redirect, the local address for tproxy), and so
//! does one to a pod on the same node; a connection from the other node to a local pod reaches
//! the hbone listener on `hbone_port` and the inbound listener on any other port; and a
//! transparent connection from node B bound to pod A1's address reaches pod B1, which sees A1 as
//! its peer (the reply path the rules route back locally). Each runs in both capture modes.
//!
//! These tests run the `ringmesh` binary only as a command (no workers), so they have no I/O
//! driver to vary; `connect_from` is tested on both drivers in `dataplane::capture`. Needs root.
//! Fixed ports are fine here: every listener is in a namespace the test just made.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

use tests::netns::{self, Testbed};
use tests::ringmesh_bin;

const OUTBOUND: u16 = 15001;
const INBOUND: u16 = 15006;
const HBONE: u16 = 15008;
const MARK: u32 = 0x539;

#[derive(Debug, Clone, Copy)]
enum Capture {
    Redirect,
    Tproxy,
}

impl Capture {
    fn name(self) -> &'static str {
        match self {
            Capture::Redirect => "redirect",
            Capture::Tproxy => "tproxy",
        }
    }
}

/// A node's config: workloads `a1`, `a2` on node `a` (10.1.0.11, .12) and `b1`, `b2` on node `b`
/// (10.2.0.11, .12), as a 2 × 2 [`Testbed`] numbers its pods.
fn config(node: &str, capture: Capture, ipv6: bool) -> String {
    let mut text = format!(
        "[node]\nname = \"{node}\"\noutbound = \"0.0.0.0:{OUTBOUND}\"\ninbound = \"0.0.0.0:{INBOUND}\"\n\
         hbone = \"0.0.0.0:{HBONE}\"\ncapture = \"{}\"\nmark = {MARK}\n",
        capture.name()
    );
    // The HBONE listener and local HBONE workloads need [identity] with the workloads' account;
    // `node rules` validates the config but reads no certificate, so the paths need not exist.
    text.push_str(
        "\n[identity]\ntrust_domain = \"cluster.local\"\ncert = \"/nonexistent/node.pem\"\n\
         key = \"/nonexistent/node.key\"\nca_bundle = \"/nonexistent/ca.pem\"\n\
         \n[[identity.service_accounts]]\nnamespace = \"shop\"\nservice_account = \"default\"\n\
         cert = \"/nonexistent/sa.pem\"\nkey = \"/nonexistent/sa.key\"\n",
    );
    for (n, subnet) in [("a", 1), ("b", 2)] {
        for p in 1..=2 {
            let v6 = if ipv6 {
                format!(", \"fd00:{subnet}::{}\"", 10 + p)
            } else {
                String::new()
            };
            text.push_str(&format!(
                "\n[[workloads]]\nname = \"{n}{p}\"\nnamespace = \"shop\"\n\
                 addresses = [\"10.{subnet}.0.{}\"{v6}]\nnode = \"{n}\"\n",
                10 + p
            ));
        }
    }
    text
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("node.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn rules_command(config: &str, flag: Option<&str>) -> Command {
    let mut command = Command::new(ringmesh_bin());
    command.args(["node", "rules", config]);
    if let Some(flag) = flag {
        command.arg(flag);
    }
    command
}

/// `ip netns list` has none of the testbed's namespaces (called after it is dropped).
fn assert_gone(namespaces: &[String]) {
    let left = netns::list().expect("ip netns list");
    for ns in namespaces {
        assert!(
            !left.contains(ns),
            "namespace {ns} is left behind: {left:?}"
        );
    }
}

#[test]
fn printed_rules_pass_nft_check_and_match_the_config() {
    for capture in [Capture::Redirect, Capture::Tproxy] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, &config("a", capture, true));
        let output = rules_command(&path, None).output().expect("run ringmesh");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("utf-8");

        let mut check = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let checked = check.wait_with_output().expect("nft -c");
        assert!(
            checked.status.success(),
            "{capture:?}: nft -c refused:\n{}\n{text}",
            String::from_utf8_lossy(&checked.stderr)
        );

        // Local addresses only, sorted; listener ports; the mark.
        assert!(
            text.contains("elements = { 10.1.0.11, 10.1.0.12 }"),
            "{text}"
        );
        assert!(
            text.contains("elements = { fd00:1::11, fd00:1::12 }"),
            "{text}"
        );
        assert!(
            !text.contains("10.2.0.") && !text.contains("fd00:2::"),
            "{text}"
        );
        assert!(
            text.contains(&format!("meta mark {MARK:#x} return")),
            "{text}"
        );
        let verb = match capture {
            Capture::Redirect => "redirect to",
            Capture::Tproxy => "tproxy ip to",
        };
        assert!(
            text.contains(&format!(
                "ip saddr @local4 meta l4proto tcp {verb} :{OUTBOUND}"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("ip daddr @local4 tcp dport 15008 {verb} :{HBONE}")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ip daddr @local4 meta l4proto tcp {verb} :{INBOUND}"
            )),
            "{text}"
        );
        assert!(
            text.contains("socket transparent 1 meta mark set 0x111"),
            "{text}"
        );
        assert!(
            text.contains("# ip -4 rule add priority 32000 fwmark 0x111 lookup 133"),
            "{text}"
        );
        // Stable: the same config prints the same text.
        let again = rules_command(&path, None).output().expect("run ringmesh");
        assert_eq!(String::from_utf8_lossy(&again.stdout), text);
    }
}

#[test]
fn a_config_without_node_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        "[[workloads]]\nname = \"a\"\nnamespace = \"x\"\naddresses = [\"10.0.0.1\"]\n",
    );
    let output = rules_command(&path, None).output().expect("run ringmesh");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no [node] section"), "{stderr}");
}

/// The namespace's nftables ruleset and policy routing, to compare states.
fn state(bed: &Testbed, ns: &str) -> String {
    let mut text = String::new();
    for args in [
        &["nft", "list", "ruleset"][..],
        &["ip", "-4", "rule"],
        &["ip", "-6", "rule"],
        &["ip", "-4", "route", "show", "table", "all"],
    ] {
        let mut command = Command::new(args[0]);
        command.args(&args[1..]);
        let output = bed.run(ns, &command).expect("read state");
        text.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    text
}

#[test]
fn apply_is_idempotent_and_remove_takes_everything_out() {
    for capture in [Capture::Redirect, Capture::Tproxy] {
        let bed = Testbed::new(1, 1).expect("testbed");
        let ns = bed.node(0).namespace.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, &config("a", capture, true));
        let before = state(&bed, &ns);
        assert!(!before.contains("ringmesh"), "{before}");

        bed.run(&ns, &rules_command(&path, Some("--apply")))
            .expect("apply");
        let once = state(&bed, &ns);
        assert!(once.contains("table inet ringmesh"), "{once}");
        assert!(once.contains("fwmark 0x111 lookup 133"), "{once}");
        bed.run(&ns, &rules_command(&path, Some("--apply")))
            .expect("apply again");
        assert_eq!(
            state(&bed, &ns),
            once,
            "{capture:?}: a second --apply changed the state"
        );

        bed.run(&ns, &rules_command(&path, Some("--remove")))
            .expect("remove");
        let removed = state(&bed, &ns);
        assert!(!removed.contains("ringmesh"), "{removed}");
        assert!(!removed.contains("fwmark"), "{removed}");
        assert!(!removed.contains("table 133"), "{removed}");
        bed.run(&ns, &rules_command(&path, Some("--remove")))
            .expect("remove when absent is no error");
        assert_eq!(state(&bed, &ns), removed);

        let namespaces = bed.namespaces().to_vec();
        drop(bed);
        assert_gone(&namespaces);
    }
}

/// A Python server in `ns` on `port` that answers each connection with a line, `tag` and
/// (`mode` `redirect`: the original destination from `SO_ORIGINAL_DST`; `tproxy`: the local
/// address of a transparent listener; `peer`: the client's address), then closes it. Returns
/// once it listens.
fn line_server(bed: &Testbed, ns: &str, port: u16, mode: &str, tag: &str) -> Child {
    let script = r#"
import socket, struct, sys
port, mode, tag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if mode == "tproxy":
    server.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
server.bind(("0.0.0.0", port))
server.listen(16)
print("ready", flush=True)
server.settimeout(30)
while True:
    conn, peer = server.accept()
    if mode == "redirect":
        raw = conn.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST
        dport, = struct.unpack_from("!H", raw, 2)
        answer = "%s:%d" % (socket.inet_ntoa(raw[4:8]), dport)
    elif mode == "tproxy":
        answer = "%s:%d" % conn.getsockname()
    else:
        answer = "%s" % peer[0]
    conn.sendall(("%s %s\n" % (tag, answer)).encode())
    conn.close()
"#;
    let mut command = Command::new(tests::python());
    command.args(["-c", script, &port.to_string(), mode, tag]);
    let mut child = bed.spawn(ns, &command).expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read readiness");
    assert_eq!(line.trim(), "ready", "the server in {ns} did not start");
    child
}

/// A Python client in `ns` that connects to `target` (from `source` with IP_TRANSPARENT and
/// SO_MARK when given) and prints the line it gets.
fn line_client(bed: &Testbed, ns: &str, target: &str, source: Option<&str>) -> String {
    let script = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
client.settimeout(20)
if len(sys.argv) > 2:
    client.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    client.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[3]))  # SO_MARK
    client.bind((sys.argv[2], 0))
client.connect((host, int(port)))
data = b""
while not data.endswith(b"\n"):
    chunk = client.recv(256)
    if not chunk:
        break
    data += chunk
sys.stdout.write(data.decode())
"#;
    let mut command = Command::new(tests::python());
    command.args(["-c", script, target]);
    if let Some(source) = source {
        command.args([source, &MARK.to_string()]);
    }
    let output = bed.run(ns, &command).expect("client");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn finish(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
    if let Some(mut out) = child.stdout.take() {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
    }
}

#[test]
fn a_pod_connection_to_another_node_is_captured_with_its_original_destination() {
    for capture in [Capture::Redirect, Capture::Tproxy] {
        let bed = Testbed::new(2, 2).expect("testbed");
        let node_a = bed.node(0).namespace.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, &config("a", capture, false));
        bed.run(&node_a, &rules_command(&path, Some("--apply")))
            .expect("apply on node a");

        let server = line_server(&bed, &node_a, OUTBOUND, capture.name(), "outbound");
        let a1 = bed.pod(0, 0);
        let b1 = bed.pod(1, 0);
        let target = format!("{}:8080", b1.address);
        let seen = line_client(&bed, &a1.namespace, &target, None);
        assert_eq!(
            seen,
            format!("outbound {target}"),
            "{capture:?}: the listener saw another destination"
        );
        // Same node: A1 to A2 goes through node A's stack, and is captured too.
        let same_node = format!("{}:9090", bed.pod(0, 1).address);
        let seen = line_client(&bed, &a1.namespace, &same_node, None);
        assert_eq!(
            seen,
            format!("outbound {same_node}"),
            "{capture:?}: same-node traffic was not captured"
        );
        finish(server);

        let namespaces = bed.namespaces().to_vec();
        drop(bed);
        assert_gone(&namespaces);
    }
}

#[test]
fn a_transparent_connection_from_the_node_keeps_the_source_pod_address() {
    for capture in [Capture::Redirect, Capture::Tproxy] {
        let bed = Testbed::new(2, 2).expect("testbed");
        let node_b = bed.node(1).namespace.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, &config("b", capture, false));
        bed.run(&node_b, &rules_command(&path, Some("--apply")))
            .expect("apply on node b");

        let b1 = bed.pod(1, 0);
        let server = line_server(&bed, &b1.namespace, 9000, "peer", "b1");
        let a1 = bed.pod(0, 0).address.to_string();
        // As ringmesh on node B connects for a tunnel from A1: from A1's address, marked. The
        // reply from B1 is addressed to A1, which node B routes to node A unless the rules
        // deliver it to the transparent socket.
        let seen = line_client(&bed, &node_b, &format!("{}:9000", b1.address), Some(&a1));
        assert_eq!(seen, format!("b1 {a1}"), "{capture:?}: B1 saw another peer");
        finish(server);

        let namespaces = bed.namespaces().to_vec();
        drop(bed);
        assert_gone(&namespaces);
    }
}

#[test]
fn connections_to_a_local_pod_reach_the_hbone_or_the_inbound_listener() {
    for capture in [Capture::Redirect, Capture::Tproxy] {
        let bed = Testbed::new(2, 1).expect("testbed");
        let node_a = bed.node(0).namespace.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, &config("a", capture, false));
        bed.run(&node_a, &rules_command(&path, Some("--apply")))
            .expect("apply on node a");
        let hbone = line_server(&bed, &node_a, HBONE, capture.name(), "hbone");
        let inbound = line_server(&bed, &node_a, INBOUND, capture.name(), "inbound");

        let a1 = bed.pod(0, 0).address;
        let b1 = &bed.pod(1, 0).namespace;
        // From the other node's pod (a tunnel would come from its node; the rule is the same).
        let tunnel = format!("{a1}:15008");
        assert_eq!(
            line_client(&bed, b1, &tunnel, None),
            format!("hbone {tunnel}"),
            "{capture:?}"
        );
        let plaintext = format!("{a1}:8080");
        assert_eq!(
            line_client(&bed, b1, &plaintext, None),
            format!("inbound {plaintext}"),
            "{capture:?}"
        );
        finish(hbone);
        finish(inbound);

        let namespaces = bed.namespaces().to_vec();
        drop(bed);
        assert_gone(&namespaces);
    }
}
