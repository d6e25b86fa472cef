//! The request as the route table sees it: a small read-only view, so one table serves HTTP/1.1
//! (`httparse` headers over the connection's buffer) and HTTP/2 (`http::HeaderMap`) without
//! copying anything. Everything is raw bytes: the route table never needs UTF-8.

/// What routing and hashing read from a request. Implement it over whatever the codec produced;
/// every method is expected to be a cheap borrow.
pub trait RequestView {
    /// The method, as sent (`GET`).
    fn method(&self) -> &[u8];
    /// The Host header (HTTP/1.1) or `:authority` (HTTP/2), port included if sent; empty if none.
    fn host(&self) -> &[u8];
    /// The path, without the query (`/api/x`). Matched as sent: no percent-decoding or
    /// dot-segment normalisation happens here.
    fn path(&self) -> &[u8];
    /// The raw query after `?`, without the `?` and without any fragment; empty if none.
    fn query(&self) -> &[u8];
    /// Every value of the header named `lower_name` (given in lower case), in order.
    fn header_values(&self, lower_name: &str) -> impl Iterator<Item = &[u8]>;
    /// The first value of the header named `lower_name`. Header conditions look at this value.
    fn header(&self, lower_name: &str) -> Option<&[u8]> {
        self.header_values(lower_name).next()
    }
    /// The connection's verified peer identity in Istio's principal form (`td/ns/x/sa/y`), if
    /// it has one. Views without a connection (tests, benches) have none.
    fn source_principal(&self) -> Option<&str> {
        None
    }
}

/// An HTTP/1.1 request head as parsed by `httparse`, borrowed from the connection's buffer.
#[derive(Debug, Clone, Copy)]
pub struct H1Request<'a> {
    /// Method.
    pub method: &'a [u8],
    /// The Host header's value (empty if absent).
    pub host: &'a [u8],
    /// Path without query.
    pub path: &'a [u8],
    /// Raw query without `?`.
    pub query: &'a [u8],
    /// All header fields.
    pub headers: &'a [httparse::Header<'a>],
}

impl<'a> H1Request<'a> {
    /// A view of a parsed request: `target` is the origin-form request target (`/p?q`), and the
    /// Host is the first `Host` header in `headers`.
    pub fn new(method: &'a str, target: &'a str, headers: &'a [httparse::Header<'a>]) -> Self {
        let (path, query) = split_target(target.as_bytes());
        let host = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map_or(&b""[..], |h| h.value);
        Self {
            method: method.as_bytes(),
            host,
            path,
            query,
            headers,
        }
    }
}

impl RequestView for H1Request<'_> {
    #[inline]
    fn method(&self) -> &[u8] {
        self.method
    }
    #[inline]
    fn host(&self) -> &[u8] {
        self.host
    }
    #[inline]
    fn path(&self) -> &[u8] {
        self.path
    }
    #[inline]
    fn query(&self) -> &[u8] {
        self.query
    }
    #[inline]
    fn header_values(&self, lower_name: &str) -> impl Iterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(lower_name))
            .map(|h| h.value)
    }
}

/// Splits a request target into path and query (`/a?b#c` → `/a`, `b`); a fragment is dropped.
#[inline]
pub fn split_target(target: &[u8]) -> (&[u8], &[u8]) {
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    match target.iter().position(|&b| b == b'?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, &[]),
    }
}

/// The `name=value` pairs of a raw query, still percent-encoded. A pair without `=` has an empty
/// value.
pub(crate) fn query_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `raw` one byte at a time. Invalid escapes are kept literally and `+` stays `+`
/// (as Envoy does for query parameters).
fn decoded(raw: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *raw.get(i)?;
        if b == b'%'
            && let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            i += 3;
            return Some(h << 4 | l);
        }
        i += 1;
        Some(b)
    })
}

/// Whether `raw` percent-decodes to exactly `want`, without decoding into a buffer.
#[inline]
pub(crate) fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    if !raw.contains(&b'%') {
        return raw == want;
    }
    decoded(raw).eq(want.iter().copied())
}

/// `raw` percent-decoded: borrowed when there is nothing to decode, else decoded into `buf`
/// (a reused buffer, so no allocation once it has grown).
#[inline]
pub(crate) fn decode_into<'b>(raw: &'b [u8], buf: &'b mut Vec<u8>) -> &'b [u8] {
    if !raw.contains(&b'%') {
        return raw;
    }
    buf.clear();
    buf.extend(decoded(raw));
    buf
}

/// Lower-cases `host` without its port into `buf`. `None` if it does not fit (no valid host name
/// is longer than 253 bytes), in which case only a `*` virtual host can serve it.
#[inline]
pub(crate) fn normalize_host<'b>(host: &[u8], buf: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    let host = strip_port(host);
    let out = buf.get_mut(..host.len())?;
    for (o, &b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// `host` without a trailing `:port`; an IPv6 literal keeps its brackets.
pub(crate) fn strip_port(host: &[u8]) -> &[u8] {
    let start = if host.first() == Some(&b'[') {
        match host.iter().position(|&b| b == b']') {
            Some(i) => i + 1,
            None => return host,
        }
    } else {
        0
    };
    match host[start..].iter().rposition(|&b| b == b':') {
        Some(i) if host[start + i + 1..].iter().all(u8::is_ascii_digit) => &host[..start + i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(split_target(b"/a/b?x=1&y"), (&b"/a/b"[..], &b"x=1&y"[..]));
        assert_eq!(split_target(b"/a"), (&b"/a"[..], &b""[..]));
        assert_eq!(split_target(b"/a?"), (&b"/a"[..], &b""[..]));
        assert_eq!(split_target(b"/a?q#frag"), (&b"/a"[..], &b"q"[..]));
    }

    #[test]
    fn query_pairs_and_decoding() {
        let pairs: Vec<_> = query_pairs(b"a=1&&b&c=x%20y&a=2").collect();
        assert_eq!(
            pairs,
            vec![
                (&b"a"[..], &b"1"[..]),
                (&b"b"[..], &b""[..]),
                (&b"c"[..], &b"x%20y"[..]),
                (&b"a"[..], &b"2"[..]),
            ]
        );
        assert!(decoded_eq(b"x%20y", b"x y"));
        assert!(decoded_eq(b"x%2fy", b"x/y"));
        assert!(
            decoded_eq(b"100%", b"100%"),
            "a truncated escape stays literal"
        );
        assert!(decoded_eq(b"%zz", b"%zz"));
        assert!(decoded_eq(b"a+b", b"a+b"), "+ is not a space here");
        assert!(!decoded_eq(b"x%20y", b"x%20y"));
        let mut buf = Vec::new();
        assert_eq!(decode_into(b"%41%42c", &mut buf), b"ABc");
        assert_eq!(decode_into(b"plain", &mut buf), b"plain");
    }

    #[test]
    fn hosts_lose_port_and_case() {
        let mut buf = [0; 256];
        assert_eq!(
            normalize_host(b"API.Example.com:8080", &mut buf),
            Some(&b"api.example.com"[..])
        );
        assert_eq!(
            normalize_host(b"example.com", &mut buf),
            Some(&b"example.com"[..])
        );
        assert_eq!(normalize_host(b"[::1]:443", &mut buf), Some(&b"[::1]"[..]));
        assert_eq!(normalize_host(b"[::1]", &mut buf), Some(&b"[::1]"[..]));
        assert_eq!(normalize_host(b"a:b", &mut buf), Some(&b"a:b"[..]));
        assert_eq!(normalize_host(&[b'a'; 300], &mut buf), None);
    }

    #[test]
    fn h1_view_reads_headers_case_insensitively() {
        let headers = [
            httparse::Header {
                name: "Host",
                value: b"example.com:80",
            },
            httparse::Header {
                name: "X-Env",
                value: b"canary",
            },
            httparse::Header {
                name: "x-env",
                value: b"second",
            },
        ];
        let req = H1Request::new("GET", "/p?q=1", &headers);
        assert_eq!(req.host(), b"example.com:80");
        assert_eq!(req.path(), b"/p");
        assert_eq!(req.query(), b"q=1");
        assert_eq!(req.header("x-env"), Some(&b"canary"[..]));
        assert_eq!(req.header_values("x-env").count(), 2);
        assert_eq!(req.header("absent"), None);
    }
}
