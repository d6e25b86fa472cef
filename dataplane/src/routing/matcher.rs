//! The non-path conditions of a route: methods, headers, query parameters and the client's
//! verified identity, compiled into plain byte strings, regex ids and principal patterns so that
//! checking them allocates nothing.

use super::regex::{MatchScratch, RegexArena, RegexId};
use super::request::{RequestView, decode_into, decoded_eq, query_pairs};
use crate::identity::PrincipalPattern;

/// A route's conditions besides the path. All must hold.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    /// Accepted methods; empty = any.
    pub(crate) methods: Box<[Box<[u8]>]>,
    pub(crate) headers: Box<[HeaderCondition]>,
    pub(crate) query: Box<[QueryCondition]>,
    /// Accepted source principals (Istio patterns); empty = any client.
    pub(crate) principals: Box<[PrincipalPattern]>,
}

#[derive(Debug)]
pub(crate) struct HeaderCondition {
    /// Lower case.
    pub(crate) name: Box<str>,
    pub(crate) test: HeaderTest,
}

#[derive(Debug)]
pub(crate) enum HeaderTest {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(RegexId),
    Present,
    Absent,
}

#[derive(Debug)]
pub(crate) struct QueryCondition {
    /// As configured (compared with the percent-decoded name in the request).
    pub(crate) name: Box<[u8]>,
    pub(crate) test: QueryTest,
}

#[derive(Debug)]
pub(crate) enum QueryTest {
    /// Against the percent-decoded value.
    Exact(Box<[u8]>),
    /// Against the percent-decoded value.
    Regex(RegexId),
    Present,
    Absent,
}

impl Conditions {
    /// The tie-breaker between routes of equal path precedence: the number of header and query
    /// conditions, plus one for a method list and one for a source principal list.
    pub(crate) fn count(&self) -> usize {
        self.headers.len()
            + self.query.len()
            + usize::from(!self.methods.is_empty())
            + usize::from(!self.principals.is_empty())
    }

    /// Whether `req` meets every condition.
    #[inline]
    pub(crate) fn matches<R: RequestView + ?Sized>(
        &self,
        req: &R,
        arena: &RegexArena,
        scratch: &mut MatchScratch,
    ) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| **m == *req.method()) {
            return false;
        }
        if !self.principals.is_empty()
            && !req
                .source_principal()
                .is_some_and(|p| self.principals.iter().any(|want| want.matches_principal(p)))
        {
            return false;
        }
        self.headers
            .iter()
            .all(|h| header_matches(h, req, arena, scratch))
            && self
                .query
                .iter()
                .all(|q| query_matches(q, req.query(), arena, scratch))
    }
}

fn header_matches<R: RequestView + ?Sized>(
    cond: &HeaderCondition,
    req: &R,
    arena: &RegexArena,
    scratch: &mut MatchScratch,
) -> bool {
    let value = req.header(&cond.name);
    match (&cond.test, value) {
        (HeaderTest::Absent, value) => value.is_none(),
        (HeaderTest::Present, value) => value.is_some(),
        (_, None) => false,
        (HeaderTest::Exact(want), Some(v)) => **want == *v,
        (HeaderTest::Prefix(want), Some(v)) => v.starts_with(want),
        (HeaderTest::Regex(id), Some(v)) => scratch.is_full_match(arena, *id, v),
    }
}

/// Query conditions look at the first parameter with the wanted (percent-decoded) name.
fn query_matches(
    cond: &QueryCondition,
    query: &[u8],
    arena: &RegexArena,
    scratch: &mut MatchScratch,
) -> bool {
    let value = query_pairs(query)
        .find(|(name, _)| decoded_eq(name, &cond.name))
        .map(|(_, value)| value);
    match (&cond.test, value) {
        (QueryTest::Absent, value) => value.is_none(),
        (QueryTest::Present, value) => value.is_some(),
        (_, None) => false,
        (QueryTest::Exact(want), Some(v)) => decoded_eq(v, want),
        (QueryTest::Regex(id), Some(v)) => {
            let mut buf = std::mem::take(&mut scratch.decode_buf);
            let matched = scratch.is_full_match(arena, *id, decode_into(v, &mut buf));
            scratch.decode_buf = buf;
            matched
        }
    }
}
