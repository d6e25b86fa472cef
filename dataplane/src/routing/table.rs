//! The lookup structures: virtual hosts by Host, and routes by path within a virtual host.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::action::{RateLimit, Route};
use super::regex::{MatchScratch, RegexArena, RegexId};
use super::request::{RequestView, normalize_host};

/// A hash map keyed by byte strings, hashed with one xxh3 call (std's SipHash costs several times
/// more on short keys, and the keys come from config, not from peers).
pub(crate) type BytesMap<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<Xxh3Hasher>>;

#[derive(Default)]
pub(crate) struct Xxh3Hasher(u64);

impl Hasher for Xxh3Hasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        // The length prefix that `[u8]`'s `Hash` writes first: fold it into the seed.
        self.0 ^= n as u64;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A set of small integers (path prefix lengths), to skip hash lookups that cannot hit.
#[derive(Debug, Default)]
pub(crate) struct LenSet(Vec<u64>);

impl LenSet {
    pub(crate) fn insert(&mut self, n: usize) {
        let word = n / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (n % 64);
    }

    #[inline]
    fn contains(&self, n: usize) -> bool {
        self.0.get(n / 64).is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
}

/// One compiled virtual host: its routes and the indexes over their paths.
#[derive(Debug)]
pub struct VirtualHost {
    /// Stable name.
    pub name: Arc<str>,
    /// Dense index of the virtual host in its config generation (its position in the config),
    /// for per-virtual-host state kept in vectors (`policy`).
    pub id: usize,
    /// Local rate limit of the whole virtual host (its state lives in `policy`, by id).
    pub rate_limit: Option<RateLimit>,
    /// Routes in config order.
    pub routes: Box<[Route]>,
    /// Exact paths → route indices, best first.
    pub(crate) exact: BytesMap<Box<[u32]>>,
    pub(crate) regex: Option<RegexIndex>,
    /// Normalised prefixes (no trailing `/`, root excluded) → route indices, best first.
    pub(crate) prefixes: BytesMap<Box<[u32]>>,
    pub(crate) prefix_lens: LenSet,
    /// Routes on the `/` prefix or with no path condition, best first.
    pub(crate) root: Box<[u32]>,
}

/// The regex routes of a virtual host, grouped by the literal text every match must start with,
/// cut back to a `/`: a pattern `/svc1/items/[0-9]+` lands in group `/svc1/items`, one like
/// `/impl.*` or `.*\.png` in the root group `""`. A lookup searches only the root group and the
/// groups keyed by the path cut at each of its `/`, so thousands of regex routes do not make every
/// request run thousands of patterns.
#[derive(Debug, Default)]
pub(crate) struct RegexIndex {
    pub(crate) groups: BytesMap<RegexGroup>,
    pub(crate) key_lens: LenSet,
    pub(crate) root: Option<RegexGroup>,
}

/// Regex routes sharing a literal start, in precedence order.
#[derive(Debug)]
pub(crate) struct RegexGroup {
    /// All members' patterns in one leftmost-first lazy DFA (pattern `i` is `members[i]`);
    /// `None` for a single member, or if the DFA could not be built.
    pub(crate) set: Option<RegexId>,
    pub(crate) members: Box<[RegexMember]>,
}

#[derive(Debug)]
pub(crate) struct RegexMember {
    /// Precedence among the virtual host's regex routes (lower wins).
    pub(crate) rank: u32,
    pub(crate) route: u32,
    /// The member's own pattern, for one-by-one tests.
    pub(crate) regex: RegexId,
}

impl RegexGroup {
    /// The best member whose pattern matches all of `path`.
    #[inline]
    fn best(
        &self,
        path: &[u8],
        arena: &RegexArena,
        scratch: &mut MatchScratch,
    ) -> Option<&RegexMember> {
        if let Some(set) = self.set
            && let Ok(found) = scratch.first_match(arena, set, path)
        {
            return found.and_then(|i| self.members.get(i));
        }
        self.members
            .iter()
            .find(|m| scratch.is_full_match(arena, m.regex, path))
    }
}

impl RegexIndex {
    /// The groups that may hold a pattern matching `path`.
    #[inline]
    fn probed<'a>(&'a self, path: &'a [u8]) -> impl Iterator<Item = &'a RegexGroup> + 'a {
        let keyed = path
            .iter()
            .enumerate()
            .skip(1)
            .filter(|&(at, &b)| b == b'/' && self.key_lens.contains(at))
            .filter_map(|(at, _)| self.groups.get(&path[..at]));
        self.root.iter().chain(keyed)
    }

    /// The best regex route for `path` (lowest rank) whose other conditions hold.
    #[inline]
    fn find<'v, R: RequestView + ?Sized>(
        &self,
        vhost: &'v VirtualHost,
        req: &R,
        arena: &RegexArena,
        scratch: &mut MatchScratch,
    ) -> Option<&'v Route> {
        let path = req.path();
        let mut best: Option<&RegexMember> = None;
        for group in self.probed(path) {
            if let Some(m) = group.best(path, arena, scratch)
                && best.is_none_or(|b| m.rank < b.rank)
            {
                best = Some(m);
            }
        }
        let best = best?;
        let route = &vhost.routes[best.route as usize];
        if route.conditions.matches(req, arena, scratch) {
            return Some(route);
        }
        // Rare: the best regex route's other conditions failed. Gather every regex route ranked
        // after it whose pattern matches, and try them in order.
        let mut candidates = std::mem::take(&mut scratch.candidates);
        candidates.clear();
        for group in self.probed(path) {
            for m in group.members.iter().filter(|m| m.rank > best.rank) {
                if scratch.is_full_match(arena, m.regex, path) {
                    candidates.push((m.rank, m.route));
                }
            }
        }
        candidates.sort_unstable();
        let found = candidates
            .iter()
            .map(|&(_, r)| &vhost.routes[r as usize])
            .find(|route| route.conditions.matches(req, arena, scratch));
        scratch.candidates = candidates;
        found
    }
}

impl VirtualHost {
    /// The best route for `req`, in this precedence: exact path, regex, prefix (longest first),
    /// then `/` and routes without a path condition; within each, more conditions first, then
    /// config order. A route whose path matches but whose other conditions fail is skipped.
    #[inline]
    pub(crate) fn find<R: RequestView + ?Sized>(
        &self,
        req: &R,
        arena: &RegexArena,
        scratch: &mut MatchScratch,
    ) -> Option<&Route> {
        let path = req.path();
        let first_ok = |candidates: &[u32], scratch: &mut MatchScratch| {
            candidates
                .iter()
                .map(|&i| &self.routes[i as usize])
                .find(|route| route.conditions.matches(req, arena, scratch))
        };

        if !self.exact.is_empty()
            && let Some(candidates) = self.exact.get(path)
            && let Some(route) = first_ok(candidates, scratch)
        {
            return Some(route);
        }

        if let Some(regex) = &self.regex
            && let Some(route) = regex.find(self, req, arena, scratch)
        {
            return Some(route);
        }

        if !self.prefixes.is_empty() {
            // Candidate prefixes are the path cut at segment boundaries, longest first: the whole
            // path (unless it ends in '/'), then before each '/'.
            let mut end = path.len();
            if path.last() != Some(&b'/')
                && self.prefix_lens.contains(end)
                && let Some(candidates) = self.prefixes.get(path)
                && let Some(route) = first_ok(candidates, scratch)
            {
                return Some(route);
            }
            while let Some(slash) = path[..end].iter().rposition(|&b| b == b'/') {
                end = slash;
                if slash == 0 {
                    break;
                }
                if self.prefix_lens.contains(slash)
                    && let Some(candidates) = self.prefixes.get(&path[..slash])
                    && let Some(route) = first_ok(candidates, scratch)
                {
                    return Some(route);
                }
            }
        }

        first_ok(&self.root, scratch)
    }
}

/// Virtual hosts by request Host, for one listener.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    /// Lower-case exact host → virtual host index.
    pub(crate) exact: BytesMap<u32>,
    /// Lower-case suffix with its leading dot (`.example.com` for `*.example.com`) → index.
    pub(crate) suffix: BytesMap<u32>,
    /// The `*` virtual host.
    pub(crate) default: Option<u32>,
}

impl HostIndex {
    /// The most specific virtual host for `host`: exact, then the longest `*.suffix` (which needs
    /// at least one character before the suffix, and may span several labels), then `*`.
    #[inline]
    fn find(&self, host: &[u8]) -> Option<u32> {
        let mut buf = [0u8; 256];
        if let Some(host) = normalize_host(host, &mut buf) {
            if let Some(&i) = self.exact.get(host) {
                return Some(i);
            }
            if !self.suffix.is_empty() {
                // Dots from the left give the suffixes longest first.
                for (at, _) in host.iter().enumerate().skip(1).filter(|&(_, &b)| b == b'.') {
                    if let Some(&i) = self.suffix.get(&host[at..]) {
                        return Some(i);
                    }
                }
            }
        }
        self.default
    }
}

/// The route table of one listener: its virtual hosts and their routes. Immutable; built once per
/// config generation and shared by all workers.
#[derive(Debug)]
pub struct RouteTable {
    pub(crate) hosts: HostIndex,
    pub(crate) vhosts: Box<[Arc<VirtualHost>]>,
    pub(crate) regexes: Arc<RegexArena>,
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'t> {
    /// The virtual host chosen by Host.
    pub virtual_host: &'t VirtualHost,
    /// The route chosen within it.
    pub route: &'t Route,
}

/// Why a lookup found nothing (both answer 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute<'t> {
    /// No virtual host serves this Host on this listener.
    NoVirtualHost,
    /// The virtual host (named) has no route for this request.
    NoRoute(&'t str),
}

impl RouteTable {
    /// The route for `req`. This is the per-request call: no allocation (once `scratch` has
    /// warmed up), no lock, no shared atomic.
    #[inline]
    pub fn find<'t, R: RequestView + ?Sized>(
        &'t self,
        req: &R,
        scratch: &mut MatchScratch,
    ) -> Result<RouteMatch<'t>, NoRoute<'t>> {
        let vhost = self
            .virtual_host(req.host())
            .ok_or(NoRoute::NoVirtualHost)?;
        let route = vhost
            .find(req, &self.regexes, scratch)
            .ok_or(NoRoute::NoRoute(&vhost.name))?;
        Ok(RouteMatch {
            virtual_host: vhost,
            route,
        })
    }

    /// Whether `req` meets the header conditions of `fault` (a fault of a route of this table).
    #[inline]
    pub fn fault_applies<R: RequestView + ?Sized>(
        &self,
        fault: &super::FaultPolicy,
        req: &R,
        scratch: &mut MatchScratch,
    ) -> bool {
        fault.when.headers.is_empty() || fault.when.matches(req, &self.regexes, scratch)
    }

    /// The virtual host serving `host` (a Host header value; case and port are ignored).
    #[inline]
    pub fn virtual_host(&self, host: &[u8]) -> Option<&VirtualHost> {
        self.hosts.find(host).map(|i| &*self.vhosts[i as usize])
    }

    /// The virtual hosts this listener serves.
    pub fn virtual_hosts(&self) -> impl Iterator<Item = &VirtualHost> {
        self.vhosts.iter().map(|v| &**v)
    }
}

/// The route tables of every HTTP listener of one config generation.
#[derive(Debug, Default)]
pub struct RouteConfig {
    pub(crate) listeners: HashMap<Arc<str>, Arc<RouteTable>>,
}

impl RouteConfig {
    /// The table of the HTTP (or auto) listener named `listener`.
    pub fn listener(&self, listener: &str) -> Option<&Arc<RouteTable>> {
        self.listeners.get(listener)
    }

    /// Every listener's table (a virtual host served by several listeners appears in each).
    pub fn tables(&self) -> impl Iterator<Item = &Arc<RouteTable>> {
        self.listeners.values()
    }
}
