//! Reading the server name (SNI) out of a TLS ClientHello without terminating TLS, and the SNI
//! route table of a passthrough listener.
//!
//! [`parse`] looks at the bytes a client has sent so far and says whether they are a complete
//! ClientHello (and which server name it asks for), need more bytes, or are not one. It is
//! strict and never panics: every length comes from the peer, so every read goes through a
//! bounds-checked cursor ([`Cursor`]), and a length that does not fit is an answer
//! ([`Hello::Invalid`]), not an index out of bounds. It handles a ClientHello split over several
//! TLS records (RFC 8446 §5.1 allows any fragmentation of handshake messages) and over any
//! number of reads: it is called again with all the bytes so far until it decides.
//!
//! The bytes are never changed: the caller forwards all of them, first, to the upstream it
//! picks. A ClientHello that fits in its first record (nearly all do) is parsed in place; one
//! spread over records is put together in a buffer first.
//!
//! The route table the name is looked up in is `routing::sni`.

use std::borrow::Cow;

/// The most bytes read while looking for a ClientHello. Real ones are 200 B to 2 KiB, with
/// post-quantum key shares and padding still under 16 KiB; Envoy's TLS inspector stops at 64 KiB
/// too. Beyond this the connection is treated as not carrying a usable ClientHello.
pub const MAX_HELLO: usize = 64 * 1024;

/// TLS record content type of handshake messages.
const HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension number of server_name (RFC 6066 §3).
const SERVER_NAME: u16 = 0;
/// The largest TLS plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
/// The most TLS records a ClientHello may be spread over. Real clients use one (four at the size
/// limit); tools that split it to get past middleboxes use a handful. Beyond this it is treated
/// as not a usable ClientHello, which bounds the work per read however a client fragments.
const MAX_RECORDS: usize = 64;
/// The longest DNS name.
const MAX_NAME: usize = 255;

/// What the bytes a client sent first are.
// The name is inline (256 bytes) on purpose: a `Hello` lives on the stack for one call, and
// boxing it would allocate per connection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// A prefix of a ClientHello: read more.
    Incomplete,
    /// A whole ClientHello, with its host name if it sent one.
    Complete(Option<ServerName>),
    /// Not a TLS ClientHello, or a broken or oversized one; says what is wrong.
    Invalid(&'static str),
}

/// A host name from the server_name extension, lowercased (names compare case-insensitively).
/// Held inline: at most 255 bytes, so reading it allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ServerName {
    len: u8,
    bytes: [u8; MAX_NAME],
}

impl ServerName {
    /// `name` lowercased, when it is a host name: labels of letters, digits, `-` and `_` (seen
    /// in real names), each 1 to 63 bytes, separated by single dots, at most 255 bytes in all.
    fn new(name: &[u8]) -> Option<Self> {
        let len = u8::try_from(name.len()).ok().filter(|&l| l > 0)?;
        let labels_ok = name.split(|&b| b == b'.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !labels_ok {
            return None;
        }
        let mut bytes = [0u8; MAX_NAME];
        for (to, from) in bytes.iter_mut().zip(name) {
            *to = from.to_ascii_lowercase();
        }
        Some(Self { len, bytes })
    }

    /// The name, lowercased.
    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        // Only ASCII is ever stored (see `new`).
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl std::fmt::Debug for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for ServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies `buf`, the bytes a client has sent so far (at most [`MAX_HELLO`] are looked at).
pub fn parse(buf: &[u8]) -> Hello {
    match handshake_message(buf) {
        Ok(message) => match client_hello_server_name(&message) {
            Ok(name) => Hello::Complete(name),
            Err(why) => Hello::Invalid(why),
        },
        Err(NotYet::Incomplete) => Hello::Incomplete,
        Err(NotYet::Invalid(why)) => Hello::Invalid(why),
    }
}

/// Why there is no whole handshake message (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotYet {
    /// More bytes could complete it.
    Incomplete,
    /// They cannot.
    Invalid(&'static str),
}

/// The first handshake message, put together from as many records as it spans, or what to say
/// instead: `Incomplete` while more bytes could complete it.
///
/// This runs again after every read, so it does little until the message is whole: it walks the
/// record headers (at most [`MAX_RECORDS`]), adding up the handshake bytes, and copies nothing
/// before they are all there — a client trickling a fragmented ClientHello a byte at a time
/// costs a few header reads per byte, not a copy of everything so far.
fn handshake_message(buf: &[u8]) -> Result<Cow<'_, [u8]>, NotYet> {
    // A TLS record starts with type 22 and version 3.x: decide on the first bytes, so that a
    // client speaking something else goes to the default at once.
    match buf {
        [] => return Err(NotYet::Incomplete),
        [first, ..] if *first != HANDSHAKE => return Err(NotYet::Invalid("not a TLS record")),
        [_, major, ..] if *major != 3 => return Err(NotYet::Invalid("not a TLS record")),
        _ => {}
    }
    let buf = buf.get(..MAX_HELLO).unwrap_or(buf);
    let mut records = Cursor::new(buf);
    // The handshake header, gathered across fragments; handshake bytes seen; the message's
    // whole length once its header is known.
    let mut head = [0u8; 4];
    let mut have = 0usize;
    let mut whole: Option<usize> = None;
    let mut count = 0usize;
    loop {
        if let Some(whole) = whole
            && have >= whole
        {
            return Ok(assemble(buf, whole));
        }
        if count == MAX_RECORDS {
            return Err(NotYet::Invalid(
                "a ClientHello spread over too many records",
            ));
        }
        let (length, fragment) =
            next_record(&mut records).ok_or_else(|| incomplete_unless_full(buf))??;
        count += 1;
        for (slot, &byte) in head.iter_mut().skip(have).zip(fragment) {
            *slot = byte;
        }
        have += fragment.len();
        if whole.is_none() && have >= head.len() {
            whole = Some(message_length(head)?);
        }
        if fragment.len() < length && whole.is_none_or(|whole| have < whole) {
            return Err(incomplete_unless_full(buf));
        }
    }
}

/// The next record's declared length and the part of its fragment there is: `None` when its
/// header is not all there, an error when it cannot belong to a ClientHello.
fn next_record<'a>(records: &mut Cursor<'a>) -> Option<Result<(usize, &'a [u8]), NotYet>> {
    let mut header = Cursor::new(records.take(5)?);
    let content_type = header.u8().unwrap_or_default();
    let major = header.u8().unwrap_or_default();
    let _minor = header.u8();
    let length = usize::from(header.u16().unwrap_or_default());
    if content_type != HANDSHAKE || major != 3 {
        // TLS 1.3 forbids interleaving other records with a fragmented handshake message.
        return Some(Err(NotYet::Invalid(
            "a record that is not a handshake inside the ClientHello",
        )));
    }
    if length == 0 || length > MAX_RECORD {
        return Some(Err(NotYet::Invalid(
            "a handshake record of impossible length",
        )));
    }
    Some(Ok((length, records.take_up_to(length))))
}

/// The first `whole` handshake bytes of `buf`'s records, which [`handshake_message`] checked are
/// there: borrowed when the first record holds them all (nearly always), else copied together.
fn assemble(buf: &[u8], whole: usize) -> Cow<'_, [u8]> {
    let mut records = Cursor::new(buf);
    let mut joined: Vec<u8> = Vec::new();
    while let Some(Ok((_, fragment))) = next_record(&mut records) {
        if joined.is_empty() && fragment.len() >= whole {
            return Cow::Borrowed(fragment.get(..whole).unwrap_or(fragment));
        }
        if joined.is_empty() {
            joined.reserve(whole);
        }
        let wanted = whole.saturating_sub(joined.len());
        joined.extend_from_slice(fragment.get(..wanted).unwrap_or(fragment));
        if joined.len() >= whole {
            break;
        }
    }
    Cow::Owned(joined)
}

/// `Incomplete`, unless [`MAX_HELLO`] bytes are already there.
fn incomplete_unless_full(buf: &[u8]) -> NotYet {
    if buf.len() >= MAX_HELLO {
        NotYet::Invalid("no whole ClientHello within the size limit")
    } else {
        NotYet::Incomplete
    }
}

/// The length of the whole first handshake message, header included, from its header.
fn message_length(head: [u8; 4]) -> Result<usize, NotYet> {
    let [kind, a, b, c] = head;
    if kind != CLIENT_HELLO {
        return Err(NotYet::Invalid(
            "the first handshake message is not a ClientHello",
        ));
    }
    let whole = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
    if whole > MAX_HELLO {
        return Err(NotYet::Invalid("a ClientHello over the size limit"));
    }
    Ok(whole)
}

/// The host name in a whole ClientHello message (handshake header included), if any.
fn client_hello_server_name(message: &[u8]) -> Result<Option<ServerName>, &'static str> {
    const BROKEN: &str = "a malformed ClientHello";
    let mut m = Cursor::new(message);
    m.take(4).ok_or(BROKEN)?; // type and length, checked by `whole_message`
    m.take(2 + 32).ok_or(BROKEN)?; // legacy_version, random
    let session_id = m.u8_prefixed().ok_or(BROKEN)?;
    if session_id.len() > 32 {
        return Err(BROKEN);
    }
    let suites = m.u16_prefixed().ok_or(BROKEN)?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(BROKEN);
    }
    let compression = m.u8_prefixed().ok_or(BROKEN)?;
    if compression.is_empty() {
        return Err(BROKEN);
    }
    if m.is_empty() {
        // No extensions at all (allowed before TLS 1.3): no server name.
        return Ok(None);
    }
    let mut extensions = Cursor::new(m.u16_prefixed().ok_or(BROKEN)?);
    if !m.is_empty() {
        return Err(BROKEN);
    }
    let mut name = None;
    let mut seen_server_name = false;
    while !extensions.is_empty() {
        let kind = extensions.u16().ok_or(BROKEN)?;
        let data = extensions.u16_prefixed().ok_or(BROKEN)?;
        if kind != SERVER_NAME {
            continue;
        }
        if seen_server_name {
            return Err("two server_name extensions");
        }
        seen_server_name = true;
        name = server_name_extension(data)?;
    }
    Ok(name)
}

/// The host_name entry of a server_name extension's data (RFC 6066 §3): a list of
/// (type, name) with at most one name of each type; type 0 is a DNS host name.
fn server_name_extension(data: &[u8]) -> Result<Option<ServerName>, &'static str> {
    const BROKEN: &str = "a malformed server_name extension";
    let mut data = Cursor::new(data);
    let mut list = Cursor::new(data.u16_prefixed().ok_or(BROKEN)?);
    if !data.is_empty() || list.is_empty() {
        return Err(BROKEN);
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8().ok_or(BROKEN)?;
        let name = list.u16_prefixed().ok_or(BROKEN)?;
        if kind != 0 {
            continue;
        }
        if host.is_some() {
            return Err("two host names in server_name");
        }
        host = Some(ServerName::new(name).ok_or("a server name that is not a host name")?);
    }
    Ok(host)
}

/// A bounds-checked reader over peer bytes: every read returns `None` rather than going past
/// the end.
#[derive(Debug)]
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// Up to `n` bytes: all that are left if fewer.
    fn take_up_to(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        self.take(n).unwrap_or_default()
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        let bytes = self.take(2)?;
        Some(u16::from_be_bytes(bytes.try_into().ok()?))
    }

    fn u8_prefixed(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn u16_prefixed(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests;
