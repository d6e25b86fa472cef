//! Authorization policies with Istio's AuthorizationPolicy semantics, as ztunnel evaluates them.
//!
//! A config's `[[authorization_policies]]` are compiled once per snapshot into matchers
//! ([`Policy`]); each listener gets the list of policies that apply to it ([`ListenerAuthz`],
//! `None` when none does: one branch per request or connection). Evaluation ([`ListenerAuthz::evaluate`])
//! reads an [`AuthzInput`] and allocates nothing:
//!
//! - every matching `audit` policy is counted, and the first one's name goes to the access log;
//! - any matching `deny` policy refuses;
//! - with no `allow` policy on the listener, the request or connection is allowed; otherwise at
//!   least one `allow` policy must match.
//!
//! A policy matches when any of its rules does (no rules: nothing; `rules = [{}]`: everything).
//! A rule matches when one of its `from` sources, one of its `to` operations and all of its
//! `when` conditions match (an empty list matches); within a source or operation every field
//! must match, and a field matches when the attribute matches any of its values (`not_` fields:
//! none of them).
//!
//! **Fail closed on non-HTTP traffic.** Hosts, methods, paths and request headers do not exist on
//! an opaque TCP connection. A field on one of them is then taken as *not* matching in an `allow`
//! or `audit` policy and as matching in a `deny` policy, so a rule that names them can never let
//! a connection through, and a `deny` rule still denies by its other fields (Istio's behaviour).
//!
//! **Peer identity.** [`AuthzInput::principal`] is the peer's SPIFFE ID when the connection is
//! mutually authenticated (`tls::TlsInfo::peer_principal`, read from the verified client
//! certificate once per connection); on plaintext, on TLS without a client certificate, or with a
//! certificate that carries no SPIFFE ID it is `None`, so a `principals` or `namespaces` field
//! never matches and a `not_principals` or `not_namespaces` field always does.
//!
//! **Live re-check.** A worker keeps every open L4 connection in its [`Registry`], registered
//! before the connection is first checked; when a reload publishes new policies, the worker
//! re-checks each and fires the `revoked` signal of those that no longer pass, which ends their
//! copy loop (ztunnel does this; Envoy does not).
//!
//! Counters are per worker (single writer), per listener and policy, carried across reloads by
//! those names.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use config_schema::{
    AuthorizationAction, AuthorizationConditionSpec, AuthorizationOperationSpec,
    AuthorizationPolicySpec, AuthorizationSourceSpec,
};

use crate::event::Signal;
use crate::identity::SpiffeId;
use crate::stats::{Counter, PerWorker};

/// Where request headers are read from (the HTTP request head; a table in tests).
pub trait HeaderSource {
    /// The first value of the header named `lower_name` (lower case).
    fn header_value(&self, lower_name: &str) -> Option<&[u8]>;
}

/// What the HTTP request adds to an [`AuthzInput`].
#[derive(Clone, Copy)]
pub struct HttpAttributes<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// Host or `:authority`, port included if sent.
    pub host: &'a str,
    /// The normalized path, without the query.
    pub path: &'a str,
    /// The request's headers.
    pub headers: &'a dyn HeaderSource,
}

impl std::fmt::Debug for HttpAttributes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAttributes")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Everything a policy can look at. `principal` and `sni` come from the connection's TLS
/// details (`None` on plaintext).
#[derive(Debug, Clone, Copy)]
pub struct AuthzInput<'a> {
    /// The connection's peer address (`ip_blocks`, `source.ip`).
    pub source_ip: IpAddr,
    /// The client's address after `xff_trusted_hops` (`remote.ip`); the peer when none.
    pub remote_ip: IpAddr,
    /// The peer's SPIFFE ID (`spiffe://td/ns/<ns>/sa/<sa>`, the scheme optional), when the
    /// connection is mutually authenticated.
    pub principal: Option<&'a str>,
    /// The TLS server name the client asked for.
    pub sni: Option<&'a str>,
    /// The port the connection arrived on.
    pub destination_port: u16,
    /// The request, for HTTP traffic; `None` for opaque TCP.
    pub http: Option<HttpAttributes<'a>>,
}

/// One string match: exact, prefix (`abc*`), suffix (`*abc`) or present (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

impl Pattern {
    fn parse(s: &str) -> Self {
        if s == "*" {
            Pattern::Any
        } else if let Some(prefix) = s.strip_suffix('*') {
            Pattern::Prefix(prefix.into())
        } else if let Some(suffix) = s.strip_prefix('*') {
            Pattern::Suffix(suffix.into())
        } else {
            Pattern::Exact(s.into())
        }
    }

    fn matches(&self, value: &[u8], ignore_case: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            Pattern::Any => true,
            Pattern::Exact(p) => eq(value, p.as_bytes()),
            Pattern::Prefix(p) => value.len() >= p.len() && eq(&value[..p.len()], p.as_bytes()),
            Pattern::Suffix(p) => {
                value.len() >= p.len() && eq(&value[value.len() - p.len()..], p.as_bytes())
            }
        }
    }
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    fn parse(s: &str) -> Option<Self> {
        let (ip, len) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = ip.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if len.is_empty() {
            max
        } else {
            len.parse::<u8>().ok().filter(|l| *l <= max)?
        };
        Some(Self { addr, len })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The attribute a field looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attribute {
    Principal,
    Namespace,
    SourceIp,
    RemoteIp,
    DestinationPort,
    Sni,
    // HTTP only:
    Host,
    Method,
    Path,
    Header(Box<str>),
}

/// What a field compares the attribute with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Values {
    Strings(Box<[Pattern]>),
    Cidrs(Box<[Cidr]>),
    Ports(Box<[u16]>),
}

/// One field of a source, operation or condition: the attribute matches any of the values
/// (`negate`: none of them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    attribute: Attribute,
    values: Values,
    negate: bool,
    ignore_case: bool,
}

impl Field {
    /// Whether the field matches; `None` when it looks at HTTP and the traffic is not HTTP.
    fn eval(&self, input: &AuthzInput<'_>) -> Option<bool> {
        let any = |value: Option<&[u8]>| -> bool {
            let Some(value) = value else {
                return false;
            };
            match &self.values {
                Values::Strings(patterns) => {
                    patterns.iter().any(|p| p.matches(value, self.ignore_case))
                }
                _ => false,
            }
        };
        let matched = match &self.attribute {
            Attribute::Principal => any(input.principal.map(|p| istio_principal(p).as_bytes())),
            Attribute::Namespace => any(input.principal.and_then(namespace_of).map(str::as_bytes)),
            Attribute::Sni => any(input.sni.map(str::as_bytes)),
            Attribute::SourceIp | Attribute::RemoteIp => {
                let ip = if self.attribute == Attribute::SourceIp {
                    input.source_ip
                } else {
                    input.remote_ip
                };
                match &self.values {
                    Values::Cidrs(cidrs) => cidrs.iter().any(|c| c.contains(ip)),
                    _ => false,
                }
            }
            Attribute::DestinationPort => match &self.values {
                Values::Ports(ports) => ports.contains(&input.destination_port),
                _ => false,
            },
            Attribute::Host => {
                let host = input.http?.host;
                any(Some(host.as_bytes())) || any(Some(without_port(host).as_bytes()))
            }
            Attribute::Method => any(Some(input.http?.method.as_bytes())),
            Attribute::Path => any(Some(input.http?.path.as_bytes())),
            Attribute::Header(name) => any(input.http?.headers.header_value(name)),
        };
        Some(matched != self.negate)
    }
}

/// A principal in Istio's form: the SPIFFE ID without its scheme.
fn istio_principal(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

/// The namespace of a SPIFFE ID `spiffe://td/ns/<ns>/sa/<sa>` (scheme optional).
fn namespace_of(id: &str) -> Option<&str> {
    let mut segments = istio_principal(id).split('/').skip(1);
    while let Some(segment) = segments.next() {
        if segment == "ns" {
            return segments.next().filter(|ns| !ns.is_empty());
        }
    }
    None
}

/// `host:port` → `host` (`[v6]:port` → `[v6]`).
fn without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon)
            if host[colon + 1..].bytes().all(|b| b.is_ascii_digit())
                && (!host.starts_with('[') || host[..colon].ends_with(']')) =>
        {
            &host[..colon]
        }
        _ => host,
    }
}

/// A compiled rule: one of `from`, one of `to`, all of `when`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    from: Box<[Box<[Field]>]>,
    to: Box<[Box<[Field]>]>,
    when: Box<[Field]>,
}

impl Rule {
    /// `http_only`: what a field on HTTP attributes counts as on non-HTTP traffic.
    fn matches(&self, input: &AuthzInput<'_>, http_only: bool) -> bool {
        let all = |fields: &[Field]| fields.iter().all(|f| f.eval(input).unwrap_or(http_only));
        (self.from.is_empty() || self.from.iter().any(|f| all(f)))
            && (self.to.is_empty() || self.to.iter().any(|f| all(f)))
            && all(&self.when)
    }
}

/// One compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its name.
    pub name: Arc<str>,
    /// What it does with what it matches.
    pub action: AuthorizationAction,
    rules: Box<[Rule]>,
}

impl Policy {
    /// Compiles a validated policy. Values that do not parse (validation refuses them) are
    /// dropped, which can only make a field match less.
    pub fn compile(spec: &AuthorizationPolicySpec) -> Self {
        let rules = spec
            .rules
            .iter()
            .map(|rule| Rule {
                from: rule.from.iter().map(source).collect(),
                to: rule.to.iter().map(operation).collect(),
                when: rule.when.iter().flat_map(condition).collect(),
            })
            .collect();
        Self {
            name: spec.name.as_str().into(),
            action: spec.action,
            rules,
        }
    }

    /// Whether the policy matches `input`.
    pub fn matches(&self, input: &AuthzInput<'_>) -> bool {
        let http_only = self.action == AuthorizationAction::Deny;
        self.rules.iter().any(|rule| rule.matches(input, http_only))
    }
}

fn strings(values: &[String]) -> Values {
    Values::Strings(values.iter().map(|v| Pattern::parse(v)).collect())
}

fn cidrs(values: &[String]) -> Values {
    Values::Cidrs(values.iter().filter_map(|v| Cidr::parse(v)).collect())
}

/// The fields for a pair of lists (`values`, `not_values`), leaving out empty ones.
fn pair<'a>(
    attribute: Attribute,
    values: &'a [String],
    not_values: &'a [String],
    ignore_case: bool,
    compile: fn(&[String]) -> Values,
) -> impl Iterator<Item = Field> + 'a {
    [(values, false), (not_values, true)]
        .into_iter()
        .filter(|(list, _)| !list.is_empty())
        .map(move |(list, negate)| Field {
            attribute: attribute.clone(),
            values: compile(list),
            negate,
            ignore_case,
        })
}

fn source(spec: &AuthorizationSourceSpec) -> Box<[Field]> {
    let principals = spec
        .principals
        .iter()
        .map(|p| istio_principal(p).to_owned());
    let not_principals = spec
        .not_principals
        .iter()
        .map(|p| istio_principal(p).to_owned());
    let principals: Vec<String> = principals.collect();
    let not_principals: Vec<String> = not_principals.collect();
    pair(
        Attribute::Principal,
        &principals,
        &not_principals,
        false,
        strings,
    )
    .chain(pair(
        Attribute::Namespace,
        &spec.namespaces,
        &spec.not_namespaces,
        false,
        strings,
    ))
    .chain(pair(
        Attribute::SourceIp,
        &spec.ip_blocks,
        &spec.not_ip_blocks,
        false,
        cidrs,
    ))
    .collect()
}

fn operation(spec: &AuthorizationOperationSpec) -> Box<[Field]> {
    let ports = [(&spec.ports, false), (&spec.not_ports, true)]
        .into_iter()
        .filter(|(list, _)| !list.is_empty())
        .map(|(list, negate)| Field {
            attribute: Attribute::DestinationPort,
            values: Values::Ports(list.as_slice().into()),
            negate,
            ignore_case: false,
        });
    pair(Attribute::Host, &spec.hosts, &spec.not_hosts, true, strings)
        .chain(ports)
        .chain(pair(
            Attribute::Method,
            &spec.methods,
            &spec.not_methods,
            false,
            strings,
        ))
        .chain(pair(
            Attribute::Path,
            &spec.paths,
            &spec.not_paths,
            spec.paths_ignore_case,
            strings,
        ))
        .collect()
}

fn condition(spec: &AuthorizationConditionSpec) -> Vec<Field> {
    let key = spec.key.as_str();
    let header = key
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'));
    let (attribute, compile): (Attribute, fn(&[String]) -> Values) = match (key, header) {
        (_, Some(name)) => (Attribute::Header(name.to_ascii_lowercase().into()), strings),
        ("source.ip", None) => (Attribute::SourceIp, cidrs),
        ("remote.ip", None) => (Attribute::RemoteIp, cidrs),
        ("source.principal", None) => (Attribute::Principal, |values: &[String]| {
            Values::Strings(
                values
                    .iter()
                    .map(|v| Pattern::parse(istio_principal(v)))
                    .collect(),
            )
        }),
        ("source.namespace", None) => (Attribute::Namespace, strings),
        ("connection.sni", None) => (Attribute::Sni, strings),
        ("destination.port", None) => (Attribute::DestinationPort, |values: &[String]| {
            Values::Ports(values.iter().filter_map(|v| v.parse().ok()).collect())
        }),
        // Validation refuses other keys; should one get here, a condition on an unknown
        // attribute never holds.
        _ => {
            return vec![Field {
                attribute: Attribute::Sni,
                values: Values::Ports(Box::new([])),
                negate: false,
                ignore_case: false,
            }];
        }
    };
    pair(attribute, &spec.values, &spec.not_values, false, compile).collect()
}

/// One worker's counts for one policy on one listener.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct AuthzCounters {
    /// Requests or connections this `allow` policy let through.
    pub allowed: Counter,
    /// Requests or connections this `deny` policy refused (for the no-match entry: refused
    /// because no `allow` policy matched).
    pub denied: Counter,
    /// Requests or connections this `audit` policy matched.
    pub audited: Counter,
}

/// A policy as applied on one listener, with its counters.
#[derive(Debug)]
pub struct Applied {
    /// The policy.
    pub policy: Arc<Policy>,
    /// Its counts on this listener.
    pub counters: Arc<PerWorker<AuthzCounters>>,
}

/// The name under which refusals for want of a matching `allow` policy are counted.
pub const NO_ALLOW_MATCHED: &str = "-";

/// The policies that apply to one listener, `deny` first, then `allow`, then `audit`.
#[derive(Debug)]
pub struct ListenerAuthz {
    /// Every applied policy, in evaluation order.
    pub policies: Box<[Applied]>,
    /// Whether any `allow` policy applies (then one must match).
    has_allow: bool,
    /// Refusals because no `allow` policy matched.
    pub no_allow_matched: Arc<PerWorker<AuthzCounters>>,
}

/// The outcome of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'s> {
    /// Let it through.
    pub allowed: bool,
    /// The deciding policy: the `deny` policy that matched, the `allow` policy that matched, or
    /// `None` (no `allow` policy applies; or, when refused, none matched).
    pub policy: Option<&'s str>,
    /// The first `audit` policy that matched.
    pub audit: Option<&'s str>,
}

impl ListenerAuthz {
    /// The policies of `policies` that apply to `listener`, or `None` when none does. Counters
    /// are carried from `previous` by policy name.
    pub fn compile(
        listener: &str,
        policies: &[(Arc<Policy>, Vec<String>)],
        previous: Option<&ListenerAuthz>,
        workers: usize,
    ) -> Option<Self> {
        let old: HashMap<&str, &Arc<PerWorker<AuthzCounters>>> = previous
            .map(|p| {
                p.policies
                    .iter()
                    .map(|a| (&*a.policy.name, &a.counters))
                    .collect()
            })
            .unwrap_or_default();
        let mut applied: Vec<Applied> = policies
            .iter()
            .filter(|(_, listeners)| {
                listeners.is_empty() || listeners.iter().any(|l| l == listener)
            })
            .map(|(policy, _)| Applied {
                policy: Arc::clone(policy),
                counters: old
                    .get(&*policy.name)
                    .map_or_else(|| Arc::new(PerWorker::new(workers)), |c| Arc::clone(c)),
            })
            .collect();
        if applied.is_empty() {
            return None;
        }
        let rank = |a: &Applied| match a.policy.action {
            AuthorizationAction::Deny => 0,
            AuthorizationAction::Allow => 1,
            AuthorizationAction::Audit => 2,
        };
        applied.sort_by_key(rank);
        Some(Self {
            has_allow: applied
                .iter()
                .any(|a| a.policy.action == AuthorizationAction::Allow),
            policies: applied.into(),
            no_allow_matched: previous.map_or_else(
                || Arc::new(PerWorker::new(workers)),
                |p| Arc::clone(&p.no_allow_matched),
            ),
        })
    }

    /// Decides on `input` and counts the outcome in `worker`'s slots.
    pub fn evaluate(&self, input: &AuthzInput<'_>, worker: usize) -> Verdict<'_> {
        let mut audit = None;
        for applied in self
            .policies
            .iter()
            .filter(|a| a.policy.action == AuthorizationAction::Audit)
        {
            if applied.policy.matches(input) {
                applied.counters.slot(worker).audited.inc();
                audit.get_or_insert(&*applied.policy.name);
            }
        }
        let verdict = self.decide(input);
        match verdict {
            (allowed, Some(index)) => {
                let applied = &self.policies[index];
                let counters = applied.counters.slot(worker);
                if allowed {
                    counters.allowed.inc();
                } else {
                    counters.denied.inc();
                }
                Verdict {
                    allowed,
                    policy: Some(&applied.policy.name),
                    audit,
                }
            }
            (allowed, None) => {
                if !allowed {
                    self.no_allow_matched.slot(worker).denied.inc();
                }
                Verdict {
                    allowed,
                    policy: None,
                    audit,
                }
            }
        }
    }

    /// Whether `input` passes, without counting (the live re-check of open connections).
    pub fn passes(&self, input: &AuthzInput<'_>) -> bool {
        self.decide(input).0
    }

    /// (allowed, index of the deciding policy).
    fn decide(&self, input: &AuthzInput<'_>) -> (bool, Option<usize>) {
        for (i, applied) in self.policies.iter().enumerate() {
            match applied.policy.action {
                AuthorizationAction::Deny if applied.policy.matches(input) => {
                    return (false, Some(i));
                }
                AuthorizationAction::Allow if applied.policy.matches(input) => {
                    return (true, Some(i));
                }
                _ => {}
            }
        }
        (!self.has_allow, None)
    }
}

/// Compiles every policy of a config once, with the listeners it names.
pub fn compile_all(specs: &[AuthorizationPolicySpec]) -> Vec<(Arc<Policy>, Vec<String>)> {
    specs
        .iter()
        .map(|spec| (Arc::new(Policy::compile(spec)), spec.listeners.clone()))
        .collect()
}

/// An open L4 connection, as the live re-check sees it.
#[derive(Debug)]
pub struct Tracked {
    /// The listener it arrived on.
    pub listener: Rc<str>,
    /// The peer.
    pub peer: SocketAddr,
    /// The port it arrived on.
    pub destination_port: u16,
    /// The server name of its TLS ClientHello (TLS passthrough listeners, and tcp listeners
    /// that terminate TLS).
    pub sni: Option<Box<str>>,
    /// The peer's verified SPIFFE ID (a tcp listener that terminates mutual TLS): kept for the
    /// life of the connection, so that a reload's policies are re-checked against it.
    pub principal: Option<SpiffeId>,
    /// Fired when a reload's policies no longer let the connection through.
    pub revoked: Signal,
}

impl Tracked {
    /// The connection as an authorization input.
    pub fn input(&self) -> AuthzInput<'_> {
        AuthzInput {
            source_ip: self.peer.ip(),
            remote_ip: self.peer.ip(),
            principal: self.principal.as_ref().map(SpiffeId::as_str),
            sni: self.sni.as_deref(),
            destination_port: self.destination_port,
            http: None,
        }
    }
}

/// One worker's open L4 connections. Registering costs one `Rc` and a slot (reused), once per
/// connection; nothing per byte.
#[derive(Debug, Default)]
pub struct Registry {
    slots: RefCell<Vec<Option<Rc<Tracked>>>>,
    free: RefCell<Vec<usize>>,
}

impl Registry {
    /// Tracks a connection until the returned registration is dropped.
    pub fn register(&self, tracked: Tracked) -> Registration<'_> {
        let (slot, tracked) = self.track(tracked);
        Registration {
            registry: self,
            slot,
            tracked,
        }
    }

    /// Tracks a connection in a slot until [`Registry::forget`] is called with the slot: for
    /// state that cannot borrow the registry (an HBONE stream's session lives on its own
    /// task). Prefer [`Registry::register`].
    pub fn track(&self, tracked: Tracked) -> (usize, Rc<Tracked>) {
        let tracked = Rc::new(tracked);
        let mut slots = self.slots.borrow_mut();
        let slot = match self.free.borrow_mut().pop() {
            Some(free) if free < slots.len() => {
                slots[free] = Some(Rc::clone(&tracked));
                free
            }
            _ => {
                slots.push(Some(Rc::clone(&tracked)));
                slots.len() - 1
            }
        };
        (slot, tracked)
    }

    /// Stops tracking the connection in `slot` (from [`Registry::track`]).
    pub fn forget(&self, slot: usize) {
        if let Some(entry) = self.slots.borrow_mut().get_mut(slot)
            && entry.take().is_some()
        {
            self.free.borrow_mut().push(slot);
        }
    }

    /// Fires `revoked` on every tracked connection for which `passes` says no; returns how
    /// many.
    pub fn recheck(&self, mut passes: impl FnMut(&Tracked) -> bool) -> usize {
        let slots = self.slots.borrow();
        let mut revoked = 0;
        for tracked in slots.iter().flatten() {
            if !tracked.revoked.is_fired() && !passes(tracked) {
                tracked.revoked.fire();
                revoked += 1;
            }
        }
        revoked
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.slots.borrow().iter().flatten().count()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in the [`Registry`]; dropping it forgets the connection.
#[derive(Debug)]
pub struct Registration<'r> {
    registry: &'r Registry,
    slot: usize,
    /// The tracked connection.
    pub tracked: Rc<Tracked>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.forget(self.slot);
    }
}

#[cfg(test)]
mod tests;
