//! Regular expressions for routing, with their search caches kept per worker core.
//!
//! The `regex` crate's `Regex` hands out search caches from an internal pool: the first thread to
//! use a regex gets a lock-free slot, every other thread goes through a mutex. A route table is
//! shared by all workers, so instead every regex of one compiled config lives in a
//! [`RegexArena`] (built on the `regex` crate's own engines from `regex_automata`, same RE2
//! syntax) and each worker passes its own [`MatchScratch`], which holds one lazily created cache
//! per regex. After warm-up a match neither locks nor allocates.
//!
//! Most patterns are compiled at config time into a fully built DFA (`dfa::dense`, size-capped):
//! searching one needs no cache at all, so it is shared by every worker as is and costs one table
//! walk over the path, with a table of a few KiB that stays in the CPU cache. Patterns whose DFA
//! would be too large fall back as follows.
//!
//! Sets of path regexes then use a lazy DFA (`hybrid`) only, never the PikeVM: a multi-pattern PikeVM
//! cache grows as states × patterns (a 10 000-route set asked for 40 GB here), and the meta regex
//! falls back to it whenever the lazy DFA gives up, which a hostile path can provoke. The lazy
//! DFA's cache is bounded (2 MiB) and it is told never to give up; should a search still fail,
//! the caller tests the set's patterns one by one (single-pattern regexes are cheap in any engine).

use std::sync::atomic::{AtomicU64, Ordering};

use regex_automata::dfa::{Automaton, StartKind, dense};
use regex_automata::{Anchored, Input, MatchKind, hybrid, meta};

/// Largest fully built DFA for one pattern / for a set (shared by all workers).
const DENSE_LIMIT_ONE: usize = 256 << 10;
const DENSE_LIMIT_SET: usize = 2 << 20;

/// Index of a regex in its [`RegexArena`].
pub(crate) type RegexId = u32;

#[derive(Debug)]
enum Compiled {
    /// One or more full-match patterns in a prebuilt DFA (leftmost-first; needs no cache).
    Dense(Box<dense::DFA<Vec<u32>>>),
    /// One full-match pattern.
    One(meta::Regex),
    /// Several full-match patterns, leftmost-first.
    Set(Box<hybrid::dfa::DFA>),
}

// Always boxed whole (`MatchScratch::caches`), so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Cache {
    None,
    One(meta::Cache),
    Set(hybrid::dfa::Cache),
}

/// Every regex of one compiled route config. Immutable and shared by all workers.
#[derive(Debug)]
pub(crate) struct RegexArena {
    /// Unique per arena (process-wide), so a scratch can tell which arena its caches belong to.
    id: u64,
    regexes: Vec<Compiled>,
}

/// Regex building errors, as text for the config error.
pub(crate) type RegexError = String;

impl RegexArena {
    pub(crate) fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            regexes: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.regexes.len()
    }

    fn push(&mut self, regex: Compiled) -> RegexId {
        self.regexes.push(regex);
        u32::try_from(self.regexes.len() - 1).expect("fewer than 2^32 regexes in one config")
    }

    /// Adds `pattern`, anchored at both ends (a full match, as the config promises).
    pub(crate) fn add(&mut self, pattern: &str) -> Result<RegexId, RegexError> {
        if let Some(dfa) = dense(&[pattern], DENSE_LIMIT_ONE) {
            return Ok(self.push(Compiled::Dense(dfa)));
        }
        let regex = meta::Regex::new(&anchored(pattern)).map_err(|e| e.to_string())?;
        Ok(self.push(Compiled::One(regex)))
    }

    /// Adds a set of full-match patterns searched in one pass: a search reports the
    /// lowest-numbered pattern that matches (leftmost-first; the patterns are anchored at both
    /// ends, so every match spans the whole input and priority alone decides). Fails for
    /// patterns the lazy DFA cannot handle (Unicode word boundaries).
    pub(crate) fn add_set(&mut self, patterns: &[&str]) -> Result<RegexId, RegexError> {
        if let Some(dfa) = dense(patterns, DENSE_LIMIT_SET) {
            return Ok(self.push(Compiled::Dense(dfa)));
        }
        let anchored: Vec<String> = patterns.iter().map(|p| anchored(p)).collect();
        let dfa = hybrid::dfa::DFA::builder()
            .configure(
                hybrid::dfa::DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    // Keep going (clearing the bounded cache as needed) rather than fail.
                    .minimum_cache_clear_count(None),
            )
            .build_many(&anchored)
            .map_err(|e| e.to_string())?;
        Ok(self.push(Compiled::Set(Box::new(dfa))))
    }
}

/// A prebuilt leftmost-first DFA with anchored starts only, if one fits in `limit` bytes.
fn dense(patterns: &[&str], limit: usize) -> Option<Box<dense::DFA<Vec<u32>>>> {
    let anchored: Vec<String> = patterns.iter().map(|p| anchored(p)).collect();
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .match_kind(MatchKind::LeftmostFirst)
                .start_kind(StartKind::Anchored)
                .dfa_size_limit(Some(limit))
                .determinize_size_limit(Some(limit)),
        )
        .build_many(&anchored)
        .ok()
        .map(Box::new)
}

fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// Per-worker scratch space for route matching: regex caches and reused buffers. Create one per
/// worker thread and pass it to every lookup; it adapts itself to whichever route config it is
/// used with (switching configs drops the old caches once).
#[derive(Debug, Default)]
pub struct MatchScratch {
    arena: u64,
    caches: Vec<Option<Box<Cache>>>,
    /// Percent-decoded query values.
    pub(crate) decode_buf: Vec<u8>,
    /// (rank, route) candidates when the best regex route's other conditions fail.
    pub(crate) candidates: Vec<(u32, u32)>,
}

impl MatchScratch {
    /// Empty scratch space; caches are created on first use.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn entry<'a>(
        &'a mut self,
        arena: &'a RegexArena,
        id: RegexId,
    ) -> (&'a Compiled, &'a mut Cache) {
        if self.arena != arena.id {
            self.arena = arena.id;
            self.caches.clear();
        }
        if self.caches.len() < arena.len() {
            self.caches.resize_with(arena.len(), || None);
        }
        let regex = &arena.regexes[id as usize];
        let cache = self.caches[id as usize].get_or_insert_with(|| {
            Box::new(match regex {
                Compiled::One(r) => Cache::One(r.create_cache()),
                Compiled::Set(dfa) => Cache::Set(dfa.create_cache()),
                Compiled::Dense(_) => Cache::None,
            })
        });
        (regex, cache)
    }

    /// Whether the single-pattern regex `id` matches all of `haystack`.
    #[inline]
    pub(crate) fn is_full_match(
        &mut self,
        arena: &RegexArena,
        id: RegexId,
        haystack: &[u8],
    ) -> bool {
        let input = Input::new(haystack).anchored(Anchored::Yes).earliest(true);
        if let Compiled::Dense(dfa) = &arena.regexes[id as usize] {
            // Cannot fail: anchored starts were built and no quit bytes were configured.
            return matches!(dfa.try_search_fwd(&input), Ok(Some(_)));
        }
        match self.entry(arena, id) {
            (Compiled::One(regex), Cache::One(cache)) => {
                regex.search_half_with(cache, &input).is_some()
            }
            (Compiled::Set(_), _) => unreachable!("regex {id} is used as a single pattern"),
            _ => unreachable!("regex {id} has a cache of its own kind"),
        }
    }

    /// The highest-priority (lowest-numbered) pattern of set `id` that matches all of
    /// `haystack`. `Err` if the lazy DFA could not answer (the caller then tests one by one).
    #[inline]
    pub(crate) fn first_match(
        &mut self,
        arena: &RegexArena,
        id: RegexId,
        haystack: &[u8],
    ) -> Result<Option<usize>, ()> {
        let input = Input::new(haystack).anchored(Anchored::Yes);
        if let Compiled::Dense(dfa) = &arena.regexes[id as usize] {
            return dfa
                .try_search_fwd(&input)
                .map(|m| m.map(|m| m.pattern().as_usize()))
                .map_err(|_| ());
        }
        match self.entry(arena, id) {
            (Compiled::Set(dfa), Cache::Set(cache)) => dfa
                .try_search_fwd(cache, &input)
                .map(|m| m.map(|m| m.pattern().as_usize()))
                .map_err(|_| ()),
            (Compiled::One(regex), Cache::One(cache)) => {
                // A set of one pattern that needed the meta engine.
                Ok(regex
                    .search_half_with(cache, &input)
                    .map(|m| m.pattern().as_usize()))
            }
            _ => unreachable!("regex {id} has a cache of its own kind"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matches_and_sets() {
        let mut arena = RegexArena::new();
        let single = arena.add("/a.*").expect("valid");
        let set = arena.add_set(&["/impl.*", "/i.*", "/x"]).expect("valid");
        let mut scratch = MatchScratch::new();
        assert!(scratch.is_full_match(&arena, single, b"/abc"));
        assert!(
            !scratch.is_full_match(&arena, single, b"x/abc"),
            "anchored at the start"
        );
        assert!(!scratch.is_full_match(&arena, single, b"/b"));
        assert_eq!(scratch.first_match(&arena, set, b"/impl/x"), Ok(Some(0)));
        assert_eq!(scratch.first_match(&arena, set, b"/impl"), Ok(Some(0)));
        assert_eq!(scratch.first_match(&arena, set, b"/ix"), Ok(Some(1)));
        assert_eq!(scratch.first_match(&arena, set, b"/x"), Ok(Some(2)));
        assert_eq!(
            scratch.first_match(&arena, set, b"/xy"),
            Ok(None),
            "anchored at the end"
        );
        // Priority, not length, decides between patterns that both match everything.
        let set = arena.add_set(&["/a/b", "/a/.*", "/.*"]).expect("valid");
        assert_eq!(scratch.first_match(&arena, set, b"/a/b"), Ok(Some(0)));
        let set = arena.add_set(&["/.*", "/a/b"]).expect("valid");
        assert_eq!(scratch.first_match(&arena, set, b"/a/b"), Ok(Some(0)));
    }

    #[test]
    fn patterns_too_big_for_a_prebuilt_dfa_fall_back() {
        // The DFA for "an `a` 16 letters before the end" needs 2^16 states.
        let blowup = "[a-z]*a[a-z]{16}";
        let mut arena = RegexArena::new();
        let small = arena.add("/x/[0-9]+").expect("valid");
        let one = arena.add(blowup).expect("valid");
        let set = arena.add_set(&["/y", blowup]).expect("valid");
        assert!(matches!(arena.regexes[small as usize], Compiled::Dense(_)));
        assert!(matches!(arena.regexes[one as usize], Compiled::One(_)));
        assert!(matches!(arena.regexes[set as usize], Compiled::Set(_)));
        let mut scratch = MatchScratch::new();
        let hit = format!("a{}", "b".repeat(16));
        let miss = "b".repeat(17);
        assert!(scratch.is_full_match(&arena, one, hit.as_bytes()));
        assert!(!scratch.is_full_match(&arena, one, miss.as_bytes()));
        assert_eq!(
            scratch.first_match(&arena, set, hit.as_bytes()),
            Ok(Some(1))
        );
        assert_eq!(scratch.first_match(&arena, set, b"/y"), Ok(Some(0)));
        assert_eq!(scratch.first_match(&arena, set, miss.as_bytes()), Ok(None));
        assert!(scratch.is_full_match(&arena, small, b"/x/12"));
    }

    #[test]
    fn scratch_follows_the_arena_it_is_used_with() {
        let mut one = RegexArena::new();
        let a = one.add("a+").expect("valid");
        let mut two = RegexArena::new();
        let _ = two.add("x").expect("valid");
        let b = two.add("b+").expect("valid");
        let mut scratch = MatchScratch::new();
        assert!(scratch.is_full_match(&one, a, b"aaa"));
        assert!(scratch.is_full_match(&two, b, b"bb"));
        assert!(scratch.is_full_match(&one, a, b"a"));
        assert!(RegexArena::new().add("(").is_err());
        assert!(
            RegexArena::new().add_set(&[r"\bword\b"]).is_err(),
            "the lazy DFA refuses Unicode word boundaries; callers fall back"
        );
    }
}
