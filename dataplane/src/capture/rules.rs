//! The node's capture rules: one nftables table (`inet ringmesh`, so removing it is one `delete
//! table`) and the policy routing that delivers replies to ringmesh's transparent sockets, made
//! from the config (`ringmesh node rules`).
//!
//! In the node's network namespace, for the addresses of local workloads (`[[workloads]]` whose
//! `node` is `[node] name`):
//! - TCP *from* a local workload, to anywhere (same-node peers too: pods route everything through
//!   the node) → the `outbound` listener;
//! - TCP *to* a local workload on `hbone_port` → the `hbone` listener;
//! - other TCP to a local workload (from non-local sources: local ones matched the first rule)
//!   → the `inbound` listener.
//!
//! Only configured listeners get rules. Every chain starts with `meta mark <mark> return`: ringmesh
//! marks its own sockets, so it never captures itself. Packets of a transparent socket (`socket
//! transparent 1`: a connection ringmesh opened from a pod's address, or a TPROXY'd one it
//! accepted) get [`ROUTE_MARK`], and `ip rule fwmark ROUTE_MARK lookup ROUTE_TABLE` with a `local`
//! default route in that table delivers them to ringmesh instead of forwarding them to the pod
//! whose address they carry. TPROXY needs the same for the captured packets themselves.
//!
//! `redirect` rewrites the destination (NAT, `type nat hook prerouting`; only a connection's first
//! packet is seen, so replies to ringmesh's own connections are never redirected); `tproxy` keeps
//! it (`type filter hook prerouting priority mangle`, every packet, so established transparent
//! sockets are matched first).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use config_schema::{CaptureMode, ConfigSpec, NodeSpec};

/// The name of ringmesh's nftables table (family `inet`).
pub const TABLE: &str = "ringmesh";
/// The mark given to packets of ringmesh's transparent sockets, for [`ROUTE_TABLE`]. Not the
/// socket mark: ringmesh's own outgoing packets carry that one and must be routed normally.
pub const ROUTE_MARK: u32 = 0x111;
/// The routing table with the `local` default route that delivers [`ROUTE_MARK`]ed packets.
pub const ROUTE_TABLE: u32 = 133;
/// The priority of the `ip rule`: before `main` (32766), after `local` (0).
pub const RULE_PRIORITY: u32 = 32000;

/// A config that cannot be made into capture rules.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// No `[node]` section.
    #[error("the config has no [node] section: there is nothing to capture for")]
    NoNode,
    /// A capture listener on a loopback address, where captured connections can never arrive.
    #[error(
        "[node] {0} = {1}: captured connections arrive on the pods' interfaces, never on loopback; listen on 0.0.0.0 or [::]"
    )]
    LoopbackListener(&'static str, SocketAddr),
    /// The socket mark collides with the routing mark.
    #[error(
        "[node] mark = {ROUTE_MARK:#x} is the mark the capture rules give replies to transparent sockets; pick another"
    )]
    MarkCollides,
}

/// The failure of one command of `--apply` or `--remove`.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {message}")]
pub struct ApplyError {
    /// The command line.
    pub command: String,
    /// Its stderr, or why it did not run.
    pub message: String,
}

/// The ruleset of one node: the nftables text and the policy-routing commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The `table inet ringmesh` definition, for `nft -f`.
    pub nft: String,
    /// `ip rule` / `ip route` argument lists (without `ip`) that [`Rules::apply`] runs.
    pub routes: Vec<Vec<String>>,
    /// Whether local workloads have IPv6 addresses (the IPv6 routing is set up only then).
    pub ipv6: bool,
}

/// The local workload addresses of `node` in `spec`, sorted: IPv4 and IPv6.
pub fn local_addresses(spec: &ConfigSpec, node: &NodeSpec) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    let local = spec
        .workloads
        .iter()
        .filter(|w| w.node.as_deref() == Some(node.name.as_str()));
    for address in local.flat_map(|w| w.addresses.iter()) {
        match address {
            IpAddr::V4(_) => v4.insert(*address),
            IpAddr::V6(_) => v6.insert(*address),
        };
    }
    (v4, v6)
}

/// Builds the rules for the config's `[node]`.
pub fn build(spec: &ConfigSpec) -> Result<Rules, RulesError> {
    let node = spec.node.as_ref().ok_or(RulesError::NoNode)?;
    if node.mark == ROUTE_MARK {
        return Err(RulesError::MarkCollides);
    }
    let listeners = [
        ("outbound", node.outbound),
        ("inbound", node.inbound),
        ("hbone", node.hbone),
    ];
    for (name, address) in listeners {
        if let Some(address) = address.filter(|a| a.ip().is_loopback()) {
            return Err(RulesError::LoopbackListener(name, address));
        }
    }
    let (v4, v6) = local_addresses(spec, node);
    let mut nft = String::new();
    let _ = writeln!(
        nft,
        "# ringmesh node rules for node {:?} (capture = {}, mark = {:#x})",
        node.name,
        capture_name(node.capture),
        node.mark
    );
    let _ = writeln!(nft, "table inet {TABLE} {{");
    write_set(&mut nft, "local4", "ipv4_addr", &v4);
    write_set(&mut nft, "local6", "ipv6_addr", &v6);
    let families: Vec<(&str, &str)> = [
        ("ip", "local4", !v4.is_empty()),
        ("ip6", "local6", !v6.is_empty()),
    ]
    .into_iter()
    .filter(|(_, _, present)| *present)
    .map(|(family, set, _)| (family, set))
    .collect();

    // Replies to ringmesh's transparent sockets are routed locally, in both modes.
    let _ = writeln!(nft, "\tchain divert {{");
    let _ = writeln!(
        nft,
        "\t\ttype filter hook prerouting priority mangle; policy accept;"
    );
    let _ = writeln!(nft, "\t\tmeta mark {:#x} return", node.mark);
    let _ = writeln!(
        nft,
        "\t\tmeta l4proto tcp socket transparent 1 meta mark set {ROUTE_MARK:#x} accept"
    );
    if node.capture == CaptureMode::Tproxy {
        for (family, set) in &families {
            write_captures(&mut nft, node, family, set, |port| {
                format!("tproxy {family} to :{port} meta mark set {ROUTE_MARK:#x} accept")
            });
        }
    }
    let _ = writeln!(nft, "\t}}");
    if node.capture == CaptureMode::Redirect {
        let _ = writeln!(nft, "\tchain capture {{");
        let _ = writeln!(
            nft,
            "\t\ttype nat hook prerouting priority dstnat; policy accept;"
        );
        let _ = writeln!(nft, "\t\tmeta mark {:#x} return", node.mark);
        for (family, set) in &families {
            write_captures(&mut nft, node, family, set, |port| {
                format!("redirect to :{port}")
            });
        }
        let _ = writeln!(nft, "\t}}");
    }
    let _ = writeln!(nft, "}}");

    // Local delivery goes through `lo`: in a fresh namespace it is down, and routes through a
    // down device are refused (IPv6) or deliver nothing.
    let lo_up = ["link", "set", "lo", "up"].map(str::to_owned).to_vec();
    let mut routes = vec![lo_up, route_rule("-4", "add"), local_route("-4")];
    if !v6.is_empty() {
        routes.push(route_rule("-6", "add"));
        routes.push(local_route("-6"));
    }
    Ok(Rules {
        nft,
        routes,
        ipv6: !v6.is_empty(),
    })
}

fn capture_name(mode: CaptureMode) -> &'static str {
    match mode {
        CaptureMode::Redirect => "redirect",
        CaptureMode::Tproxy => "tproxy",
    }
}

fn write_set(nft: &mut String, name: &str, kind: &str, addresses: &BTreeSet<IpAddr>) {
    let _ = writeln!(nft, "\tset {name} {{");
    let _ = writeln!(nft, "\t\ttype {kind}");
    if !addresses.is_empty() {
        let list: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
        let _ = writeln!(nft, "\t\telements = {{ {} }}", list.join(", "));
    }
    let _ = writeln!(nft, "\t}}");
}

/// The three capture rules for one address family, in the order that makes them exclusive.
fn write_captures(
    nft: &mut String,
    node: &NodeSpec,
    family: &str,
    set: &str,
    to: impl Fn(u16) -> String,
) {
    if let Some(outbound) = node.outbound {
        let _ = writeln!(
            nft,
            "\t\t{family} saddr @{set} meta l4proto tcp {}",
            to(outbound.port())
        );
    }
    if let Some(hbone) = node.hbone {
        let _ = writeln!(
            nft,
            "\t\t{family} daddr @{set} tcp dport {} {}",
            node.hbone_port,
            to(hbone.port())
        );
    }
    if let Some(inbound) = node.inbound {
        let _ = writeln!(
            nft,
            "\t\t{family} daddr @{set} meta l4proto tcp {}",
            to(inbound.port())
        );
    }
}

fn route_rule(family: &str, verb: &str) -> Vec<String> {
    let args = format!(
        "{family} rule {verb} priority {RULE_PRIORITY} fwmark {ROUTE_MARK:#x} lookup {ROUTE_TABLE}"
    );
    args.split(' ').map(str::to_owned).collect()
}

fn local_route(family: &str) -> Vec<String> {
    let all = if family == "-6" { "::/0" } else { "0.0.0.0/0" };
    format!("{family} route replace local {all} dev lo table {ROUTE_TABLE}")
        .split(' ')
        .map(str::to_owned)
        .collect()
}

impl Rules {
    /// The text `ringmesh node rules` prints: the nftables ruleset, then the routing commands as
    /// comments (so the whole text is still valid `nft -f` input).
    pub fn text(&self) -> String {
        let mut text = self.nft.clone();
        text.push_str("# policy routing (installed by --apply):\n");
        for route in &self.routes {
            let _ = writeln!(text, "# ip {}", route.join(" "));
        }
        text
    }

    /// Installs the rules in the current network namespace, replacing an older ringmesh table and
    /// routing rule: running it twice leaves the same state as once.
    pub fn apply(&self) -> Result<(), ApplyError> {
        // Creating the table first makes the delete succeed when it is absent; the three steps are
        // one nftables transaction, so no packet sees a half-made table.
        let script = format!(
            "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
            self.nft
        );
        nft(&script)?;
        delete_route_rules("-4")?;
        if self.ipv6 {
            delete_route_rules("-6")?;
        }
        for route in &self.routes {
            ip(route)?;
        }
        Ok(())
    }

    /// Takes ringmesh's table, routing rules and routes out of the current network namespace; no
    /// error when they are absent.
    pub fn remove() -> Result<(), ApplyError> {
        nft(&format!(
            "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
        ))?;
        for family in ["-4", "-6"] {
            delete_route_rules(family)?;
            let flush: Vec<String> = format!("{family} route flush table {ROUTE_TABLE}")
                .split(' ')
                .map(str::to_owned)
                .collect();
            // An empty table (or no IPv6 at all) is not an error: there is nothing to remove.
            if let Err(e) = ip(&flush)
                && !is_absent(&e.message)
            {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Deletes every copy of ringmesh's `ip rule` (a crashed earlier `--apply` may have left more
/// than one), stopping at the first "no such rule".
fn delete_route_rules(family: &str) -> Result<(), ApplyError> {
    let delete = route_rule(family, "del");
    // Bounded: each success removes one rule, and no one adds 64 copies.
    for _ in 0..64 {
        match ip(&delete) {
            Ok(()) => continue,
            Err(e) if is_absent(&e.message) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What `ip` says when the rule, route or table is not there, or the family is not configured.
fn is_absent(message: &str) -> bool {
    [
        "No such file or directory",
        "No such process",
        "Address family not supported",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn ip(args: &[String]) -> Result<(), ApplyError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ApplyError {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ApplyError {
        command,
        message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn nft(script: &str) -> Result<(), ApplyError> {
    let command = "nft -f -".to_owned();
    let fail = |message: String| ApplyError {
        command: command.clone(),
        message,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(fail(
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(node: &str) -> ConfigSpec {
        let text = format!(
            r#"
[node]
name = "a"
{node}

# Required by the HBONE listener and local HBONE workloads; the rules read no certificate.
[identity]
trust_domain = "cluster.local"
cert = "node.pem"
key = "node.key"
ca_bundle = "ca.pem"

[[identity.service_accounts]]
namespace = "shop"
service_account = "default"
cert = "sa.pem"
key = "sa.key"

[[workloads]]
name = "a1"
namespace = "shop"
addresses = ["10.1.0.12", "fd00:1::12"]
node = "a"

[[workloads]]
name = "a2"
namespace = "shop"
addresses = ["10.1.0.11"]
node = "a"

[[workloads]]
name = "b1"
namespace = "shop"
addresses = ["10.2.0.11"]
node = "b"
"#
        );
        config_schema::parse(&text)
            .unwrap_or_else(|e| panic!("config: {e:?}"))
            .spec
    }

    #[test]
    fn redirect_rules_capture_local_workloads_only_and_sorted() {
        let rules = build(&spec(
            "outbound = \"0.0.0.0:15001\"\ninbound = \"0.0.0.0:15006\"\nhbone = \"0.0.0.0:15008\"",
        ))
        .expect("rules");
        let nft = &rules.nft;
        assert!(nft.contains("elements = { 10.1.0.11, 10.1.0.12 }"), "{nft}");
        assert!(nft.contains("elements = { fd00:1::12 }"), "{nft}");
        assert!(!nft.contains("10.2.0.11"), "{nft}");
        assert!(
            nft.contains("ip saddr @local4 meta l4proto tcp redirect to :15001"),
            "{nft}"
        );
        assert!(
            nft.contains("ip daddr @local4 tcp dport 15008 redirect to :15008"),
            "{nft}"
        );
        assert!(
            nft.contains("ip6 daddr @local6 meta l4proto tcp redirect to :15006"),
            "{nft}"
        );
        assert_eq!(nft.matches("meta mark 0x539 return").count(), 2, "{nft}");
        assert!(rules.ipv6);
        assert!(
            rules
                .text()
                .contains("# ip -6 route replace local ::/0 dev lo table 133")
        );
    }

    #[test]
    fn tproxy_rules_mark_for_local_delivery_and_skip_absent_listeners() {
        let rules = build(&spec(
            "outbound = \"0.0.0.0:15001\"\ncapture = \"tproxy\"\nmark = 7",
        ))
        .expect("rules");
        let nft = &rules.nft;
        assert!(
            nft.contains(
                "ip saddr @local4 meta l4proto tcp tproxy ip to :15001 meta mark set 0x111 accept"
            ),
            "{nft}"
        );
        assert!(!nft.contains("15006") && !nft.contains("15008"), "{nft}");
        assert!(!nft.contains("type nat"), "{nft}");
        assert!(nft.contains("meta mark 0x7 return"), "{nft}");
    }

    #[test]
    fn configs_the_rules_cannot_serve_are_refused() {
        // The loader refuses these too; the rules do not rely on it.
        let mut loopback = spec("outbound = \"0.0.0.0:15001\"");
        if let Some(node) = loopback.node.as_mut() {
            node.outbound = Some("127.0.0.1:15001".parse().expect("addr"));
        }
        assert!(matches!(
            build(&loopback),
            Err(RulesError::LoopbackListener("outbound", _))
        ));
        let mut collides = spec("outbound = \"0.0.0.0:15001\"");
        if let Some(node) = collides.node.as_mut() {
            node.mark = ROUTE_MARK;
        }
        assert!(matches!(build(&collides), Err(RulesError::MarkCollides)));
        assert!(matches!(
            build(&ConfigSpec::default()),
            Err(RulesError::NoNode)
        ));
    }
}
