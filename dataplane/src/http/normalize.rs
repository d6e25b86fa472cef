//! Request path normalization, once for HTTP/1.1 and HTTP/2, before routing and authorization
//! (`exchange::decide`); the upstream receives the normalized path.
//!
//! An authorization rule on `/admin` is only as good as the path it is compared with: `//admin`,
//! `/./admin`, `/%61dmin` and `/admin/../admin` all reach `/admin` on a typical upstream. So,
//! as Envoy's `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action` do, in this
//! order and in the path only (never the query):
//!
//! 1. **Escapes** (`normalize_path`): a `%` must be followed by two hex digits, else the request
//!    is refused (400); escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!    (`%61` → `a`, `%2E` → `.`), escapes of control characters (`%00`–`%1F`, `%7F`) refuse the
//!    request, the rest stay encoded with upper-case hex (RFC 3986 §6.2.2.1, §6.2.2.2).
//!    `%2F` and `%5C` follow `path_with_escaped_slashes`: kept, refused, or decoded to `/` (a
//!    decoded backslash becomes `/` too, as Envoy's normalization turns `\` into `/`).
//! 2. **Slashes** (`merge_slashes`): runs of `/` become one.
//! 3. **Dot segments** (`normalize_path`): RFC 3986 §5.2.4, `.` dropped, `..` removes the
//!    segment before it; `..` above the root stays at the root.
//!
//! The common case costs a scan and no allocation: a path with no `%`, no `//` and no dot
//! segment is used as it is; otherwise the result is written into a buffer the connection
//! reuses. The result is a fixed point: normalizing it again gives the same path.

use config_schema::EscapedSlashes;

pub use crate::snapshot::PathRules;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    InvalidEscape,
    /// An escaped control character (`%00`, `%0A`, ...).
    EscapedControl,
    /// `%2F` or `%5C` on a listener that refuses them.
    EscapedSlash,
}

impl PathError {
    /// The 400 answer's text.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::InvalidEscape => "invalid percent-encoding in path",
            PathError::EscapedControl => "escaped control character in path",
            PathError::EscapedSlash => "escaped slash in path",
        }
    }
}

/// Normalizes `path` (which starts with `/`). `Ok(false)`: it is already normal and `out` is
/// untouched; `Ok(true)`: the normal form is in `out`.
pub fn normalize(path: &[u8], rules: &PathRules, out: &mut Vec<u8>) -> Result<bool, PathError> {
    if rules.is_off() || is_normal(path, rules) {
        return Ok(false);
    }
    out.clear();
    decode(path, rules, out)?;
    if rules.merge_slashes {
        merge_slashes(out);
    }
    if rules.normalize {
        remove_dot_segments(out);
    }
    Ok(true)
}

/// The fast scan: whether `normalize` has nothing to do on `path`, without writing anything.
fn is_normal(path: &[u8], rules: &PathRules) -> bool {
    let escapes_matter = rules.normalize || rules.escaped_slashes != EscapedSlashes::Keep;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' if escapes_matter => return false,
            b'/' => {
                let rest = &path[i + 1..];
                if rules.merge_slashes && rest.first() == Some(&b'/') {
                    return false;
                }
                if rules.normalize && is_dot_segment(rest) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// Whether `rest` (what follows a `/`) starts with a `.` or `..` segment.
fn is_dot_segment(rest: &[u8]) -> bool {
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    matches!(&rest[..end], b"." | b"..")
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Step 1 into `out`: escapes.
fn decode(path: &[u8], rules: &PathRules, out: &mut Vec<u8>) -> Result<(), PathError> {
    let upper = |n: u8| b"0123456789ABCDEF"[usize::from(n & 0xf)];
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let digits = path.get(i + 1).copied().zip(path.get(i + 2).copied());
        let Some((hi, lo)) = digits.and_then(|(h, l)| Some((hex(h)?, hex(l)?))) else {
            if rules.normalize {
                return Err(PathError::InvalidEscape);
            }
            // Not normalizing: a stray `%` is the upstream's business.
            out.push(b);
            i += 1;
            continue;
        };
        let value = (hi << 4) | lo;
        let escape = &path[i..i + 3];
        if value == b'/' || value == b'\\' {
            match rules.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Decode => out.push(b'/'),
                EscapedSlashes::Keep if rules.normalize => {
                    out.extend_from_slice(&[b'%', upper(hi), upper(lo)]);
                }
                EscapedSlashes::Keep => out.extend_from_slice(escape),
            }
        } else if !rules.normalize {
            out.extend_from_slice(escape);
        } else if is_unreserved(value) {
            out.push(value);
        } else if value < 0x20 || value == 0x7f {
            return Err(PathError::EscapedControl);
        } else {
            out.extend_from_slice(&[b'%', upper(hi), upper(lo)]);
        }
        i += 3;
    }
    Ok(())
}

/// Step 2, in place.
fn merge_slashes(buf: &mut Vec<u8>) {
    let mut w = 0;
    for r in 0..buf.len() {
        let b = buf[r];
        if b == b'/' && w > 0 && buf[w - 1] == b'/' {
            continue;
        }
        buf[w] = b;
        w += 1;
    }
    buf.truncate(w);
}

/// Step 3, in place: RFC 3986 §5.2.4 for an absolute path. The output is never longer than
/// what was read of the input, so one buffer serves as both.
fn remove_dot_segments(buf: &mut Vec<u8>) {
    let n = buf.len();
    if buf.first() != Some(&b'/') {
        return;
    }
    let mut w = 0;
    let mut r = 0;
    while r < n {
        // buf[r] is the '/' before a segment.
        let start = r + 1;
        let end = buf[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(n, |p| start + p);
        match &buf[start..end] {
            b"." => {}
            b".." => {
                w = buf[..w].iter().rposition(|&b| b == b'/').unwrap_or(0);
            }
            _ => {
                buf.copy_within(r..end, w);
                w += end - r;
                r = end;
                continue;
            }
        }
        // A dot segment at the end leaves the path ending in '/': `/a/.` → `/a/`.
        if end == n {
            buf[w] = b'/';
            w += 1;
        }
        r = end;
    }
    if w == 0 {
        buf[0] = b'/';
        w = 1;
    }
    buf.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: PathRules = PathRules {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
    };

    fn norm(path: &str, rules: &PathRules) -> Result<String, PathError> {
        let mut out = Vec::new();
        let changed = normalize(path.as_bytes(), rules, &mut out)?;
        Ok(if changed {
            String::from_utf8_lossy(&out).into_owned()
        } else {
            path.to_owned()
        })
    }

    #[test]
    fn rfc_3986_dot_segment_examples() {
        // §5.2.4 and the absolute results of §5.4.1/§5.4.2 (base http://a/b/c/d;p?q).
        let no_merge = PathRules {
            merge_slashes: false,
            ..DEFAULT
        };
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/b/c/./g", "/b/c/g"),
            ("/b/c/g/.", "/b/c/g/"),
            ("/b/c/..", "/b/"),
            ("/b/c/../g", "/b/g"),
            ("/b/../../g", "/g"),
            ("/../g", "/g"),
            ("/./g", "/g"),
            ("/b/c/g.", "/b/c/g."),
            ("/b/c/.g", "/b/c/.g"),
            ("/b/c/g..", "/b/c/g.."),
            ("/b/c/..g", "/b/c/..g"),
            ("/b/c/./../g", "/b/g"),
            ("/b/c/./g/.", "/b/c/g/"),
            ("/b/c/g/./h", "/b/c/g/h"),
            ("/b/c/g/../h", "/b/c/h"),
            ("/..", "/"),
            ("/.", "/"),
            ("/", "/"),
            ("/a//../b", "/a/b"),
        ] {
            assert_eq!(norm(input, &no_merge).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn the_bypass_list_becomes_admin() {
        for input in [
            "/admin",
            "//admin",
            "///admin",
            "/./admin",
            "/%61dmin",
            "/%61%64%6D%69%6e",
            "/admin/../admin",
            "/x/../admin",
            "/../admin",
            "/%2e/admin",
            "/%2E%2E/admin",
            "/.//admin",
        ] {
            assert_eq!(norm(input, &DEFAULT).as_deref(), Ok("/admin"), "{input}");
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(norm("/a%2fb", &DEFAULT).as_deref(), Ok("/a%2Fb"));
        assert_eq!(
            norm("/a%3fb", &DEFAULT).as_deref(),
            Ok("/a%3Fb"),
            "reserved stays"
        );
        assert_eq!(norm("/a%20b", &DEFAULT).as_deref(), Ok("/a%20b"));
        assert_eq!(norm("/a%7e%7E", &DEFAULT).as_deref(), Ok("/a~~"));
        assert_eq!(norm("/%zz", &DEFAULT), Err(PathError::InvalidEscape));
        assert_eq!(norm("/a%2", &DEFAULT), Err(PathError::InvalidEscape));
        assert_eq!(norm("/a%", &DEFAULT), Err(PathError::InvalidEscape));
        assert_eq!(norm("/a%00", &DEFAULT), Err(PathError::EscapedControl));
        assert_eq!(norm("/a%0a", &DEFAULT), Err(PathError::EscapedControl));
        assert_eq!(norm("/a%7F", &DEFAULT), Err(PathError::EscapedControl));
        let reject = PathRules {
            escaped_slashes: EscapedSlashes::Reject,
            ..DEFAULT
        };
        assert_eq!(norm("/a%2Fb", &reject), Err(PathError::EscapedSlash));
        assert_eq!(norm("/a%5cb", &reject), Err(PathError::EscapedSlash));
        assert_eq!(norm("/a/b", &reject).as_deref(), Ok("/a/b"));
        let decode = PathRules {
            escaped_slashes: EscapedSlashes::Decode,
            ..DEFAULT
        };
        assert_eq!(norm("/a%2Fb", &decode).as_deref(), Ok("/a/b"));
        assert_eq!(norm("/a%5Cb", &decode).as_deref(), Ok("/a/b"));
        assert_eq!(norm("/x%2F..%2Fadmin", &decode).as_deref(), Ok("/admin"));
        assert_eq!(norm("/%2F%2Fadmin", &decode).as_deref(), Ok("/admin"));
    }

    #[test]
    fn each_rule_alone() {
        let off = PathRules {
            normalize: false,
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        };
        let p = "//a/./b/../%61%zz";
        assert_eq!(norm(p, &off).as_deref(), Ok(p), "off leaves paths alone");
        let merge_only = PathRules {
            merge_slashes: true,
            ..off
        };
        assert_eq!(norm("//a/./%61", &merge_only).as_deref(), Ok("/a/./%61"));
        let normalize_only = PathRules {
            normalize: true,
            ..off
        };
        assert_eq!(norm("//a/./%61", &normalize_only).as_deref(), Ok("//a/a"));
    }

    #[test]
    fn normal_paths_are_not_copied() {
        let mut out = Vec::new();
        for p in ["/", "/a/b", "/a.b/.c/..d/", "/a/b/"] {
            assert_eq!(
                normalize(p.as_bytes(), &DEFAULT, &mut out),
                Ok(false),
                "{p}"
            );
        }
        assert!(out.is_empty());
    }

    /// xorshift64*, enough for a bounded random test.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn random_paths_never_panic_and_normalize_to_a_fixed_point() {
        let alphabet = b"/./%2e%2E%2f%5Cazq09%00%zz~-_";
        let modes = [
            EscapedSlashes::Keep,
            EscapedSlashes::Reject,
            EscapedSlashes::Decode,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = Vec::new();
        let mut again = Vec::new();
        for round in 0..20_000u32 {
            let len = (next(&mut state) % 24) as usize;
            let mut path = vec![b'/'];
            for _ in 0..len {
                path.push(alphabet[(next(&mut state) % alphabet.len() as u64) as usize]);
            }
            let bits = next(&mut state);
            let rules = PathRules {
                normalize: bits & 1 == 1,
                merge_slashes: bits & 2 == 2,
                escaped_slashes: modes[(round % 3) as usize],
            };
            let Ok(changed) = normalize(&path, &rules, &mut out) else {
                continue;
            };
            let first = if changed { out.clone() } else { path.clone() };
            assert!(first.starts_with(b"/"));
            let second = match normalize(&first, &rules, &mut again) {
                Ok(true) => again.clone(),
                Ok(false) => first.clone(),
                Err(e) => panic!(
                    "{:?} normalized is refused: {e:?}",
                    String::from_utf8_lossy(&first)
                ),
            };
            assert_eq!(
                second,
                first,
                "{:?} → {:?} is not a fixed point ({rules:?})",
                String::from_utf8_lossy(&path),
                String::from_utf8_lossy(&first)
            );
        }
    }
}
