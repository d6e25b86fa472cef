//! Network namespaces for node-mode tests: a [`Testbed`] of nodes that route for their pods, the
//! topology of `deploy/testbed/testbed.sh` (Istio ambient's, as ztunnel sees it).
//!
//! - Node `i` (0-based) is a namespace with a bridge `br0` holding `10.<i+1>.0.1/24`, routing
//!   (`ip_forward = 1`) for its pods' subnet `10.<i+1>.0.0/24`.
//! - Pod `j` of node `i` is a namespace whose `eth0` (a veth whose peer `vp<j>` is a port of the
//!   node's bridge) has `10.<i+1>.0.<j+11>/32`, an on-link route to the bridge address and a
//!   default route through it. With a /32 a pod reaches even a same-node peer through the node's
//!   IP stack (with a /24 it would answer over L2 and bypass the node's capture rules).
//! - Two nodes are joined by a veth `link0` (`10.255.0.1/24` and `10.255.0.2/24`) with routes to
//!   each other's pod subnet. More than two nodes are not built.
//!
//! Names carry the test process's id and a counter, so tests running at once never collide and no
//! stale-name sweep is needed. Dropping the [`Testbed`] (also while a test panics) kills what it
//! spawned and every other process left in its namespaces, and deletes them. Needs root.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A node: its namespace and addresses.
#[derive(Debug, Clone)]
pub struct Node {
    /// The network namespace's name.
    pub namespace: String,
    /// Its bridge's address, the pods' gateway.
    pub bridge_address: Ipv4Addr,
    /// Its address on the link between nodes.
    pub link_address: Ipv4Addr,
    /// Its pods' subnet (a /24).
    pub subnet: Ipv4Addr,
}

/// A pod: its namespace, node and address.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The network namespace's name.
    pub namespace: String,
    /// The index of its node.
    pub node: usize,
    /// Its address (a /32 on `eth0`).
    pub address: Ipv4Addr,
}

/// Nodes × pods in network namespaces; see the module docs for the topology.
#[derive(Debug)]
pub struct Testbed {
    nodes: Vec<Node>,
    pods: Vec<Vec<Pod>>,
    /// Every namespace made so far, deleted on drop (also those of a half-built testbed).
    namespaces: Vec<String>,
    spawned: Mutex<Vec<u32>>,
}

impl Testbed {
    /// Builds `nodes` nodes (1 or 2) with `pods` pods each. Every failing step is an error that
    /// names its command; what was made before it is taken down.
    pub fn new(nodes: usize, pods: usize) -> io::Result<Testbed> {
        if !(1..=2).contains(&nodes) || !(1..=200).contains(&pods) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a testbed has 1 or 2 nodes and 1 to 200 pods per node",
            ));
        }
        let id = format!(
            "rm{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut bed = Testbed {
            nodes: Vec::new(),
            pods: Vec::new(),
            namespaces: Vec::new(),
            spawned: Mutex::new(Vec::new()),
        };
        // On error `bed` is dropped here, which deletes the namespaces made so far.
        for i in 0..nodes {
            bed.add_node(&id, i, pods)?;
        }
        if nodes == 2 {
            bed.link_nodes()?;
        }
        Ok(bed)
    }

    fn add_node(&mut self, id: &str, i: usize, pods: usize) -> io::Result<()> {
        let octet = u8::try_from(i + 1).map_err(|_| io::Error::other("node index"))?;
        let node = Node {
            namespace: format!("{id}n{i}"),
            bridge_address: Ipv4Addr::new(10, octet, 0, 1),
            link_address: Ipv4Addr::new(10, 255, 0, octet),
            subnet: Ipv4Addr::new(10, octet, 0, 0),
        };
        let ns = node.namespace.clone();
        self.add_namespace(&ns)?;
        for key in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
        ] {
            ip_netns_exec(&ns, &["sysctl", "-qw", key])?;
        }
        // With br_netfilter loaded, IP packets crossing the bridge meet the inet hooks in bridge
        // context, where TPROXY finds no route to the listener; pods are routed, not bridged,
        // so the node turns it off (`-e`: the keys exist only when the module is loaded).
        for key in [
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
        ] {
            ip_netns_exec(&ns, &["sysctl", "-qwe", key])?;
        }
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        let bridge = format!("{}/24", node.bridge_address);
        ip(&["-n", &ns, "addr", "add", &bridge, "dev", "br0"])?;
        ip(&["-n", &ns, "link", "set", "br0", "up"])?;
        let mut node_pods = Vec::new();
        for j in 0..pods {
            let host = u8::try_from(j + 11).map_err(|_| io::Error::other("pod index"))?;
            let pod = Pod {
                namespace: format!("{id}p{i}x{j}"),
                node: i,
                address: Ipv4Addr::new(10, octet, 0, host),
            };
            self.add_pod(&node, &pod, j)?;
            node_pods.push(pod);
        }
        self.nodes.push(node);
        self.pods.push(node_pods);
        Ok(())
    }

    fn add_pod(&mut self, node: &Node, pod: &Pod, j: usize) -> io::Result<()> {
        let ns = &pod.namespace;
        self.add_namespace(ns)?;
        let port = format!("vp{j}");
        let n = &node.namespace;
        ip(&[
            "-n", n, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", n, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", n, "link", "set", &port, "up"])?;
        let address = format!("{}/32", pod.address);
        let gateway = node.bridge_address.to_string();
        ip(&["-n", ns, "addr", "add", &address, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n", ns, "route", "add", &gateway, "dev", "eth0", "scope", "link",
        ])?;
        ip(&[
            "-n", ns, "route", "add", "default", "via", &gateway, "dev", "eth0",
        ])?;
        Ok(())
    }

    fn link_nodes(&mut self) -> io::Result<()> {
        let (a, b) = (self.nodes[0].clone(), self.nodes[1].clone());
        ip(&[
            "-n",
            &a.namespace,
            "link",
            "add",
            "link0",
            "type",
            "veth",
            "peer",
            "name",
            "link0",
            "netns",
            &b.namespace,
        ])?;
        for (this, other) in [(&a, &b), (&b, &a)] {
            let ns = &this.namespace;
            let address = format!("{}/24", this.link_address);
            ip(&["-n", ns, "addr", "add", &address, "dev", "link0"])?;
            ip(&["-n", ns, "link", "set", "link0", "up"])?;
            let subnet = format!("{}/24", other.subnet);
            let via = other.link_address.to_string();
            ip(&[
                "-n", ns, "route", "add", &subnet, "via", &via, "dev", "link0",
            ])?;
        }
        Ok(())
    }

    fn add_namespace(&mut self, ns: &str) -> io::Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `node`.
    pub fn node(&self, node: usize) -> &Node {
        &self.nodes[node]
    }

    /// Pod `pod` of node `node`.
    pub fn pod(&self, node: usize, pod: usize) -> &Pod {
        &self.pods[node][pod]
    }

    /// Every namespace of the testbed (nodes and pods).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Starts `command` in namespace `ns` (`ip netns exec`), with its stdout piped (read it from
    /// the returned child, or it may block once the pipe is full), stdin closed and stderr
    /// inherited; it is killed when the testbed drops.
    pub fn spawn(&self, ns: &str, command: &Command) -> io::Result<Child> {
        let mut wrapped = in_namespace(ns, command);
        wrapped
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let child = wrapped
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", describe(&wrapped))))?;
        if let Ok(mut spawned) = self.spawned.lock() {
            spawned.push(child.id());
        }
        Ok(child)
    }

    /// Runs `command` in namespace `ns` to completion; a non-zero exit is an error with its
    /// command line and stderr.
    pub fn run(&self, ns: &str, command: &Command) -> io::Result<Output> {
        run(in_namespace(ns, command))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let spawned = match self.spawned.lock() {
            Ok(mut spawned) => std::mem::take(&mut *spawned),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let mut pids: Vec<u32> = spawned;
        for ns in &self.namespaces {
            if let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() {
                let text = String::from_utf8_lossy(&output.stdout);
                pids.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Pods first: their veths go with them, then the nodes (and the link).
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The namespaces that exist now (`ip netns list`), to check that a test left none behind.
pub fn list() -> io::Result<Vec<String>> {
    let output = run(ip_command(&["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// A command run in namespace `ns`: `ip netns exec ns <program> <args>`, with `command`'s
/// environment and directory.
fn in_namespace(ns: &str, command: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", ns])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

fn ip_command(args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(args);
    command
}

fn ip(args: &[&str]) -> io::Result<()> {
    run(ip_command(args)).map(drop)
}

fn ip_netns_exec(ns: &str, args: &[&str]) -> io::Result<()> {
    let mut command = Command::new(args[0]);
    command.args(&args[1..]);
    run(in_namespace(ns, &command)).map(drop)
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn run(mut command: Command) -> io::Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("`{}`: {e}", describe(&command))))?;
    if output.status.success() {
        return Ok(output);
    }
    Err(io::Error::other(format!(
        "`{}` failed ({}): {}",
        describe(&command),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// Runs `f` on a new thread that has entered network namespace `ns`, and returns what it returns.
/// A socket keeps the namespace it was made in, so a socket made by `f` can be used from any
/// thread of the test afterwards: this is how a test talks from (or listens in) a pod without a
/// helper process.
pub fn within<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("setns {path}: {e}")))?;
        f()
    });
    thread
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A TCP connection from namespace `ns` to `address` (connect timeout `timeout`; the stream gets
/// it as read and write timeout too).
pub fn connect(
    ns: &str,
    address: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    let stream = within(ns, move || {
        std::net::TcpStream::connect_timeout(&address, timeout)
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// A TCP listener bound to `address` in namespace `ns`.
pub fn bind(ns: &str, address: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    within(ns, move || std::net::TcpListener::bind(address))
}

/// A packet capture (`tcpdump -w`) running in a namespace; see [`Testbed::capture`].
#[derive(Debug)]
pub struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Testbed {
    /// Starts `tcpdump -i interface -U -s 0 -w file filter` in namespace `ns` and returns once it
    /// captures (its file has the pcap header). [`Capture::finish`] stops it.
    pub fn capture(
        &self,
        ns: &str,
        interface: &str,
        filter: &str,
        file: &std::path::Path,
    ) -> io::Result<Capture> {
        let mut command = Command::new("tcpdump");
        command
            .args([
                "-i",
                interface,
                "-Z",
                "root",
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-n",
                "-w",
            ])
            .arg(file)
            .args(filter.split_whitespace());
        let mut wrapped = in_namespace(ns, &command);
        wrapped
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = wrapped
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", describe(&wrapped))))?;
        if let Ok(mut spawned) = self.spawned.lock() {
            spawned.push(child.id());
        }
        let mut capture = Capture {
            child,
            file: file.to_owned(),
        };
        // tcpdump writes the 24-byte pcap header once the interface is open.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if std::fs::metadata(file).is_ok_and(|m| m.len() >= 24) {
                return Ok(capture);
            }
            if let Some(status) = capture.child.try_wait()? {
                return Err(io::Error::other(format!("tcpdump exited with {status}")));
            }
            if std::time::Instant::now() > deadline {
                let _ = capture.child.kill();
                let _ = capture.child.wait();
                return Err(io::Error::other("tcpdump did not start capturing"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Capture {
    /// Stops tcpdump (SIGINT, so it flushes) and returns the raw capture file and its packets as
    /// `tcpdump -nn -r` prints them, one line each.
    pub fn finish(mut self) -> io::Result<(Vec<u8>, Vec<String>)> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        self.child.wait()?;
        let raw = std::fs::read(&self.file)?;
        let mut read = Command::new("tcpdump");
        read.args(["-nn", "-r"]).arg(&self.file);
        let output = run(read)?;
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        Ok((raw, lines))
    }
}
