//! The access log's text format and status filter, parsed once: the validator reports a bad
//! operator at its line, and the data plane compiles the same parse into its line writer.
//!
//! A format is literal text and Envoy's `%COMMAND%` operators, with Envoy's names and meanings
//! ([`Operator`]). An unknown operator, an operator without its closing `%`, or a `%` that starts
//! none is an error, as in Envoy.

use std::fmt;

/// Envoy's default format.
pub const DEFAULT_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
     %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
     %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \
     \"%UPSTREAM_HOST%\"\n";

/// One piece of a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text written as it is.
    Literal(String),
    /// A field of the entry.
    Operator(Operator),
}

/// The operators ringmesh has, by Envoy's name. Fields without a value render as `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `%START_TIME%` (`2025-11-21T13:13:07.715Z`) or `%START_TIME(format)%`.
    StartTime(Option<Vec<TimePiece>>),
    /// `%REQ(NAME?ALTERNATIVE):MAX%`: a request header (or `:method`, `:path`, `:authority`,
    /// `:scheme`), the alternative when the first is absent, at most `MAX` bytes.
    Req {
        /// Lower-case header name.
        name: String,
        /// Lower-case alternative name.
        alternative: Option<String>,
        /// Truncation length.
        max: Option<usize>,
    },
    /// `%RESP(NAME?ALTERNATIVE):MAX%`: a header of the upstream's response that the client got
    /// (as the upstream sent it), as `%REQ%` does for the request.
    Resp {
        /// Lower-case header name.
        name: String,
        /// Lower-case alternative name.
        alternative: Option<String>,
        /// Truncation length.
        max: Option<usize>,
    },
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`; `-` for L4.
    Protocol,
    /// `%RESPONSE_CODE%`: 0 when none was sent, and for L4.
    ResponseCode,
    /// `%RESPONSE_FLAGS%`: `UF,URX`, or `-`.
    ResponseFlags,
    /// `%BYTES_RECEIVED%`: request body bytes (L4: bytes from the client).
    BytesReceived,
    /// `%BYTES_SENT%`: response body bytes (L4: bytes to the client).
    BytesSent,
    /// `%DURATION%`: milliseconds, from the request head (L4: the accept) to the end.
    Duration,
    /// `%UPSTREAM_HOST%`: the endpoint, `IP:port`.
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`.
    UpstreamCluster,
    /// `%ROUTE_NAME%`.
    RouteName,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client, `IP:port` (a trusted `x-forwarded-for`
    /// entry as `IP:0`, as Envoy writes it).
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`: the connection's peer, `IP:port`.
    DownstreamDirectRemoteAddress,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamDirectRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_PEER_URI_SAN%`: the client certificate's SPIFFE ID.
    DownstreamPeerUriSan,
    /// `%UPSTREAM_PEER_URI_SAN%`: the upstream certificate's SPIFFE ID.
    UpstreamPeerUriSan,
    /// `%REQUESTED_SERVER_NAME%`: the SNI.
    RequestedServerName,
    /// `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`: HTTP attempts, or L4 connect attempts.
    UpstreamRequestAttemptCount,
    /// `%CONNECTION_TERMINATION_DETAILS%`: why the proxy ended an L4 connection.
    ConnectionTerminationDetails,
    /// `%TRACE_ID%`: the request's trace id (32 hex digits).
    TraceId,
}

/// A piece of a `%START_TIME(...)%` format (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimePiece {
    /// Text as it is.
    Literal(String),
    /// `%Y`.
    Year,
    /// `%y`.
    YearOfCentury,
    /// `%m`.
    Month,
    /// `%d`.
    Day,
    /// `%H`.
    Hour,
    /// `%M`.
    Minute,
    /// `%S`.
    Second,
    /// `%s`: seconds since the epoch.
    EpochSeconds,
    /// `%1f` … `%9f`: that many digits of the second's fraction (`%f`: 9).
    Fraction(u8),
    /// `%z`: `+0000`.
    Offset,
    /// `%Z`: `UTC`.
    Zone,
}

/// Why a format does not parse: the message names the operator and its byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a text format into its pieces.
pub fn parse(format: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    let mut offset = 0;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        let command = &rest[at + 1..];
        let Some(end) = operator_end(command) else {
            return Err(FormatError(format!(
                "a `%` at byte {} starts no operator (no closing `%`)",
                offset + at
            )));
        };
        let text = &command[..end];
        let operator = operator(text).map_err(|why| {
            FormatError(format!("operator %{text}% at byte {}: {why}", offset + at))
        })?;
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Operator(operator));
        let consumed = at + 1 + end + 1;
        rest = &rest[consumed..];
        offset += consumed;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

/// The length of the command that starts `text` (after its opening `%`), up to its closing `%`
/// outside parentheses (a `START_TIME` format holds `%` signs of its own).
fn operator_end(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn operator(text: &str) -> Result<Operator, String> {
    let (name, argument, max) = split_command(text)?;
    let plain = |operator: Operator| match (argument, max) {
        (None, None) => Ok(operator),
        _ => Err("takes no argument".to_owned()),
    };
    match name {
        "START_TIME" => match (argument, max) {
            (None, None) => Ok(Operator::StartTime(None)),
            (Some(format), None) => Ok(Operator::StartTime(Some(time_format(format)?))),
            (_, Some(_)) => Err("takes no length".to_owned()),
        },
        "REQ" => {
            let Some(argument) = argument else {
                return Err("needs a header name: %REQ(NAME)%".to_owned());
            };
            let (first, alternative) = match argument.split_once('?') {
                Some((first, alternative)) => (first, Some(alternative)),
                None => (argument, None),
            };
            Ok(Operator::Req {
                name: header_name(first)?,
                alternative: alternative.map(header_name).transpose()?,
                max,
            })
        }
        "RESP" => {
            let Some(argument) = argument else {
                return Err("needs a header name: %RESP(NAME)%".to_owned());
            };
            let (first, alternative) = match argument.split_once('?') {
                Some((first, alternative)) => (first, Some(alternative)),
                None => (argument, None),
            };
            let field = |name: &str| {
                if name.starts_with(':') {
                    Err(format!(
                        "{name:?}: %RESP% reads header fields, not pseudo-headers"
                    ))
                } else {
                    header_name(name)
                }
            };
            Ok(Operator::Resp {
                name: field(first)?,
                alternative: alternative.map(field).transpose()?,
                max,
            })
        }
        "TRAILER" | "RESPONSE_CODE_DETAILS" => Err(
            "not supported yet: ringmesh keeps no trailer or response detail for the log"
                .to_owned(),
        ),
        "PROTOCOL" => plain(Operator::Protocol),
        "RESPONSE_CODE" => plain(Operator::ResponseCode),
        "RESPONSE_FLAGS" => plain(Operator::ResponseFlags),
        "BYTES_RECEIVED" => plain(Operator::BytesReceived),
        "BYTES_SENT" => plain(Operator::BytesSent),
        "DURATION" => plain(Operator::Duration),
        "UPSTREAM_HOST" => plain(Operator::UpstreamHost),
        "UPSTREAM_CLUSTER" => plain(Operator::UpstreamCluster),
        "ROUTE_NAME" => plain(Operator::RouteName),
        "DOWNSTREAM_REMOTE_ADDRESS" => plain(Operator::DownstreamRemoteAddress),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            plain(Operator::DownstreamRemoteAddressWithoutPort)
        }
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => plain(Operator::DownstreamDirectRemoteAddress),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            plain(Operator::DownstreamDirectRemoteAddressWithoutPort)
        }
        "DOWNSTREAM_PEER_URI_SAN" => plain(Operator::DownstreamPeerUriSan),
        "UPSTREAM_PEER_URI_SAN" => plain(Operator::UpstreamPeerUriSan),
        "REQUESTED_SERVER_NAME" => plain(Operator::RequestedServerName),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => plain(Operator::UpstreamRequestAttemptCount),
        "CONNECTION_TERMINATION_DETAILS" => plain(Operator::ConnectionTerminationDetails),
        "TRACE_ID" => plain(Operator::TraceId),
        _ => Err("unknown operator".to_owned()),
    }
}

/// `NAME`, `NAME(ARGUMENT)` or `NAME(ARGUMENT):MAX`.
fn split_command(text: &str) -> Result<(&str, Option<&str>, Option<usize>), String> {
    let Some(open) = text.find('(') else {
        if text.contains(':') {
            return Err("a length follows a `(...)` argument only".to_owned());
        }
        return Ok((text, None, None));
    };
    let Some(close) = text.rfind(')').filter(|&close| close > open) else {
        return Err("no closing `)`".to_owned());
    };
    let max = match &text[close + 1..] {
        "" => None,
        tail => {
            let digits = tail
                .strip_prefix(':')
                .ok_or_else(|| format!("unexpected {tail:?} after `)`"))?;
            let max = digits
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("length {digits:?} is not a positive number"))?;
            Some(max)
        }
    };
    Ok((&text[..open], Some(&text[open + 1..close]), max))
}

/// A header name for `%REQ(...)%`, lower-cased: a token, or one of the pseudo-headers ringmesh
/// knows.
fn header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if let Some(pseudo) = lower.strip_prefix(':') {
        return match pseudo {
            "method" | "path" | "authority" | "scheme" => Ok(lower),
            _ => Err(format!(
                "unknown pseudo-header {name:?} (known: :method, :path, :authority, :scheme)"
            )),
        };
    }
    let token = !lower.is_empty()
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b));
    if token {
        Ok(lower)
    } else {
        Err(format!("{name:?} is not a header name"))
    }
}

/// The strftime-like specifiers of `%START_TIME(...)%`.
fn time_format(format: &str) -> Result<Vec<TimePiece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            literal.push(c);
            continue;
        }
        let piece = match chars.next() {
            Some('%') => {
                literal.push('%');
                continue;
            }
            Some('Y') => TimePiece::Year,
            Some('y') => TimePiece::YearOfCentury,
            Some('m') => TimePiece::Month,
            Some('d') => TimePiece::Day,
            Some('H') => TimePiece::Hour,
            Some('M') => TimePiece::Minute,
            Some('S') => TimePiece::Second,
            Some('s') => TimePiece::EpochSeconds,
            Some('z') => TimePiece::Offset,
            Some('Z') => TimePiece::Zone,
            Some('f') => TimePiece::Fraction(9),
            Some(d @ '1'..='9') => match chars.next() {
                Some('f') => TimePiece::Fraction(d as u8 - b'0'),
                _ => return Err(format!("unknown time specifier %{d}… (expected %{d}f)")),
            },
            Some(other) => {
                return Err(format!(
                    "unknown time specifier %{other} (known: %Y %y %m %d %H %M %S %s %z %Z %f %1f-%9f %%)"
                ));
            }
            None => return Err("the time format ends in a lone `%`".to_owned()),
        };
        if !literal.is_empty() {
            pieces.push(TimePiece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(piece);
    }
    if !literal.is_empty() {
        pieces.push(TimePiece::Literal(literal));
    }
    Ok(pieces)
}

/// Parses one status condition of `filter.status` into the inclusive range it admits.
pub fn status_range(condition: &str) -> Result<(u16, u16), String> {
    let condition = condition.trim();
    let number = |text: &str| -> Result<u16, String> {
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|&n| n <= 999)
            .ok_or_else(|| format!("{:?} is not a status code (0-999)", text.trim()))
    };
    let range = if let Some(n) = condition.strip_prefix(">=") {
        (number(n)?, 999)
    } else if let Some(n) = condition.strip_prefix("<=") {
        (0, number(n)?)
    } else if let Some(n) = condition.strip_prefix('>') {
        (number(n)?.saturating_add(1), 999)
    } else if let Some(n) = condition.strip_prefix('<') {
        let n = number(n)?;
        if n == 0 {
            return Err("`<0` admits no status".to_owned());
        }
        (0, n - 1)
    } else if let Some((low, high)) = condition.split_once('-') {
        (number(low)?, number(high)?)
    } else {
        let n = number(condition).map_err(|_| {
            format!("{condition:?}: expected 404, >=400, >400, <=299, <300 or 500-599")
        })?;
        (n, n)
    };
    if range.0 > range.1 {
        return Err(format!("{condition:?} admits no status"));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_format_parses() {
        let pieces = parse(DEFAULT_TEXT_FORMAT).expect("the default parses");
        assert!(pieces.contains(&Piece::Operator(Operator::Req {
            name: "x-envoy-original-path".into(),
            alternative: Some(":path".into()),
            max: None,
        })));
        assert_eq!(pieces.first(), Some(&Piece::Literal("[".into())));
    }

    #[test]
    fn operators_and_errors() {
        assert_eq!(
            parse("a %REQ(User-Agent):10% b").expect("parses"),
            vec![
                Piece::Literal("a ".into()),
                Piece::Operator(Operator::Req {
                    name: "user-agent".into(),
                    alternative: None,
                    max: Some(10),
                }),
                Piece::Literal(" b".into()),
            ]
        );
        assert_eq!(
            parse("%START_TIME(%Y/%m %3f%%)%").expect("parses"),
            vec![Piece::Operator(Operator::StartTime(Some(vec![
                TimePiece::Year,
                TimePiece::Literal("/".into()),
                TimePiece::Month,
                TimePiece::Literal(" ".into()),
                TimePiece::Fraction(3),
                TimePiece::Literal("%".into()),
            ])))]
        );
        for bad in [
            "%NOPE%",
            "%DURATION",
            "%REQ%",
            "%REQ(a b)%",
            "%REQ(x):0%",
            "%DURATION(x)%",
            "%START_TIME(%Q)%",
            "%RESP(:status)%",
            "%TRAILER(x)%",
            "100%",
        ] {
            assert!(parse(bad).is_err(), "{bad} is an error");
        }
        let error = parse("ok %BOGUS%").expect_err("unknown");
        assert_eq!(error.0, "operator %BOGUS% at byte 3: unknown operator");
    }

    #[test]
    fn status_conditions() {
        assert_eq!(status_range(">=400"), Ok((400, 999)));
        assert_eq!(status_range(">400"), Ok((401, 999)));
        assert_eq!(status_range("<300"), Ok((0, 299)));
        assert_eq!(status_range("<=299"), Ok((0, 299)));
        assert_eq!(status_range("500-599"), Ok((500, 599)));
        assert_eq!(status_range("404"), Ok((404, 404)));
        for bad in ["", "abc", ">=1000", "599-500", "<0", "=404"] {
            assert!(status_range(bad).is_err(), "{bad} is an error");
        }
    }
}
