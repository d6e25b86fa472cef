//! Regular expressions for routing, with their search caches kept per worker core.
//!
//! The `regex` crate's `Regex` hands out search caches from an internal pool: the first thread to
//! use a regex gets a lock-free slot, every other thread goes through a mutex. A route table is
//! shared by all workers, so instead every regex of one compiled config lives in a
//! [`RegexArena`] (the `regex` crate's own engine, `regex_automata::meta`, same RE2 syntax) and
//! each worker passes its own [`MatchScratch`], which holds one lazily created cache per regex.
//! After warm-up a match neither locks nor allocates.

use std::sync::atomic::{AtomicU64, Ordering};

use regex_automata::{Anchored, Input, MatchKind, PatternSet, meta};

/// Index of a regex in its [`RegexArena`].
pub(crate) type RegexId = u32;

/// Every regex of one compiled route config. Immutable and shared by all workers.
#[derive(Debug)]
pub(crate) struct RegexArena {
    /// Unique per arena (process-wide), so a scratch can tell which arena its caches belong to.
    id: u64,
    regexes: Vec<meta::Regex>,
    /// The largest pattern count of any one regex, for the scratch's `PatternSet`.
    max_patterns: usize,
}

/// Regex building errors, as text for the config error.
pub(crate) type RegexError = String;

impl RegexArena {
    pub(crate) fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            regexes: Vec::new(),
            max_patterns: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.regexes.len()
    }

    fn push(&mut self, regex: meta::Regex) -> RegexId {
        self.max_patterns = self.max_patterns.max(regex.pattern_len());
        self.regexes.push(regex);
        u32::try_from(self.regexes.len() - 1).expect("fewer than 2^32 regexes in one config")
    }

    /// Adds `pattern`, anchored at both ends (a full match, as the config promises).
    pub(crate) fn add(&mut self, pattern: &str) -> Result<RegexId, RegexError> {
        let regex = meta::Regex::new(&anchored(pattern)).map_err(|e| e.to_string())?;
        Ok(self.push(regex))
    }

    /// Adds a set of full-match patterns searched in one pass. With `MatchKind::LeftmostFirst` a
    /// search reports the lowest-numbered pattern that matches (the patterns are anchored at both
    /// ends, so every match spans the whole input and priority alone decides); with
    /// `MatchKind::All`, [`MatchScratch::all_matches`] reports every pattern that matches.
    pub(crate) fn add_set(
        &mut self,
        patterns: &[&str],
        kind: MatchKind,
    ) -> Result<RegexId, RegexError> {
        let anchored: Vec<String> = patterns.iter().map(|p| anchored(p)).collect();
        let regex = meta::Regex::builder()
            .configure(
                meta::Config::new()
                    .match_kind(kind)
                    // Thousands of route regexes in one set outgrow the 10 MiB default.
                    .nfa_size_limit(Some(256 << 20)),
            )
            .build_many(&anchored)
            .map_err(|e| e.to_string())?;
        Ok(self.push(regex))
    }
}

fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// Per-worker scratch space for route matching: regex caches and a buffer for percent-decoding.
/// Create one per worker thread and pass it to every lookup; it adapts itself to whichever route
/// config it is used with (switching configs drops the old caches once).
#[derive(Debug, Default)]
pub struct MatchScratch {
    arena: u64,
    caches: Vec<Option<Box<meta::Cache>>>,
    patterns: Option<PatternSet>,
    pub(crate) decode_buf: Vec<u8>,
}

impl MatchScratch {
    /// Empty scratch space; caches are created on first use.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    fn cache<'a>(
        &'a mut self,
        arena: &'a RegexArena,
        id: RegexId,
    ) -> (&'a meta::Regex, &'a mut meta::Cache) {
        if self.arena != arena.id {
            self.arena = arena.id;
            self.caches.clear();
            self.caches.resize_with(arena.len(), || None);
            self.patterns = None;
        }
        let regex = &arena.regexes[id as usize];
        let cache = self.caches[id as usize].get_or_insert_with(|| Box::new(regex.create_cache()));
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
        let (regex, cache) = self.cache(arena, id);
        let input = Input::new(haystack).anchored(Anchored::Yes).earliest(true);
        regex.search_half_with(cache, &input).is_some()
    }

    /// The highest-priority (lowest-numbered) pattern of the leftmost-first set `id` that matches
    /// all of `haystack`.
    #[inline]
    pub(crate) fn first_match(
        &mut self,
        arena: &RegexArena,
        id: RegexId,
        haystack: &[u8],
    ) -> Option<usize> {
        let (regex, cache) = self.cache(arena, id);
        let input = Input::new(haystack).anchored(Anchored::Yes);
        regex
            .search_half_with(cache, &input)
            .map(|m| m.pattern().as_usize())
    }

    /// Every pattern of the match-all set `id` that matches all of `haystack`.
    pub(crate) fn all_matches(
        &mut self,
        arena: &RegexArena,
        id: RegexId,
        haystack: &[u8],
    ) -> &PatternSet {
        let _ = self.cache(arena, id);
        let cache = self.caches[id as usize]
            .as_deref_mut()
            .expect("cache() just created the cache for this regex");
        let patterns = self
            .patterns
            .get_or_insert_with(|| PatternSet::new(arena.max_patterns));
        patterns.clear();
        let input = Input::new(haystack).anchored(Anchored::Yes);
        arena.regexes[id as usize].which_overlapping_matches_with(cache, &input, patterns);
        patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matches_and_sets() {
        let mut arena = RegexArena::new();
        let single = arena.add("/a.*").expect("valid");
        let first = arena
            .add_set(&["/impl.*", "/i.*", "/x"], MatchKind::LeftmostFirst)
            .expect("valid");
        let all = arena
            .add_set(&["/impl.*", "/i.*", "/x"], MatchKind::All)
            .expect("valid");
        let mut scratch = MatchScratch::new();
        assert!(scratch.is_full_match(&arena, single, b"/abc"));
        assert!(
            !scratch.is_full_match(&arena, single, b"x/abc"),
            "anchored at the start"
        );
        assert_eq!(scratch.first_match(&arena, first, b"/impl/x"), Some(0));
        assert_eq!(scratch.first_match(&arena, first, b"/ix"), Some(1));
        assert_eq!(scratch.first_match(&arena, first, b"/x"), Some(2));
        assert_eq!(
            scratch.first_match(&arena, first, b"/xy"),
            None,
            "anchored at the end"
        );
        let matched: Vec<usize> = scratch
            .all_matches(&arena, all, b"/impl")
            .iter()
            .map(|p| p.as_usize())
            .collect();
        assert_eq!(matched, vec![0, 1]);
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
        assert!(arena_error().is_err());
    }

    fn arena_error() -> Result<RegexId, RegexError> {
        RegexArena::new().add("(")
    }
}
