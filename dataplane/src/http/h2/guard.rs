//! Abuse limits for inbound HTTP/2 connections, enforced on the frame stream itself.
//!
//! The `h2` crate already bounds what it buffers (pending-accept resets, locally generated resets,
//! CONTINUATION frames beyond the header list size, flow-control windows). What it does not do is
//! notice a peer that costs work without costing it anything: a PING or SETTINGS flood, runs of
//! empty frames, or streams opened and reset as fast as they can be written ("rapid reset",
//! CVE-2023-44487) after the application has accepted them. So every byte a client sends passes
//! through a [`FrameGuard`], which follows the frame headers (9 bytes each, never the payloads)
//! and reports the first limit broken; the connection is then closed with
//! GOAWAY(ENHANCE_YOUR_CALM).
//!
//! Control frames (PING, SETTINGS, PRIORITY, their ACKs, and frame types this server does not
//! know, which cost parsing and are never acted on) share one token bucket. WINDOW_UPDATE frames
//! are free while they answer data the server sent (the guard also follows the frame headers the
//! server writes, [`FrameGuard::outbound`]), and spend from the same bucket beyond that. Resets
//! the client provokes the server into ("MadeYouReset", CVE-2025-8671: a PRIORITY frame that
//! makes a stream depend on itself, or a zero-increment WINDOW_UPDATE on a stream — RFC 9113
//! makes both stream errors; `h2` closes the connection for the latter) count as resets, as the
//! client's own do.

use crate::snapshot::GuardLimits;
use std::time::Instant;

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const PUSH_PROMISE: u8 = 0x5;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// The client connection preface, which precedes the first frame.
const PREFACE_LEN: usize = 24;

/// WINDOW_UPDATE frames a client may send before they count against the control-frame budget:
/// this many at any time (a client may open its windows before any data arrives) ...
const FREE_WINDOW_UPDATES: u64 = 100;
/// ... plus this many per DATA frame the server has sent (a stream and a connection update per
/// frame at most, in practice; Envoy allows 10 as well).
const WINDOW_UPDATES_PER_DATA_FRAME: u64 = 10;

/// Which limit a connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    /// More than half of its streams were reset by the client, past the tolerance.
    RapidReset,
    /// PING/SETTINGS/PRIORITY (or their ACKs, or unknown frame types) faster than the budget.
    ControlFlood,
    /// WINDOW_UPDATE frames beyond what the data sent explains, faster than the control budget.
    WindowUpdateFlood,
    /// Resets the client made the server send (CVE-2025-8671), counted as rapid reset is.
    MadeYouReset,
    /// A header block that never ends, or outgrows the limit.
    ContinuationFlood,
    /// Frames that carry nothing, one after another.
    EmptyFrames,
}

impl Abuse {
    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Abuse::RapidReset => "rapid_reset",
            Abuse::ControlFlood => "control_flood",
            Abuse::WindowUpdateFlood => "window_update_flood",
            Abuse::MadeYouReset => "made_you_reset",
            Abuse::ContinuationFlood => "continuation_flood",
            Abuse::EmptyFrames => "empty_frames",
        }
    }
}

/// Follows the frames of one inbound HTTP/2 byte stream.
#[derive(Debug)]
pub struct FrameGuard {
    limits: GuardLimits,
    /// Bytes of the connection preface still to skip.
    preface_left: usize,
    /// The frame header being assembled.
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
    /// Inside a header block (HEADERS without END_HEADERS, then CONTINUATIONs).
    header_block: Option<u32>,
    /// The current frame's type and stream, and the first 4 payload bytes, for the frames whose
    /// payload matters (WINDOW_UPDATE, PRIORITY).
    kind: u8,
    stream: u32,
    payload: [u8; 4],
    payload_len: usize,
    streams_opened: u32,
    /// Resets: the client's RST_STREAM frames and the ones it provoked.
    resets: u32,
    /// WINDOW_UPDATE frames received.
    window_updates: u64,
    /// The frames the server writes.
    outbound: Outbound,
    empty_in_a_row: u32,
    /// Control-frame token bucket.
    tokens: f64,
    refilled_at: Instant,
    broken: Option<Abuse>,
}

impl FrameGuard {
    /// A guard for a server-side connection, which starts with the client preface.
    pub fn new(limits: GuardLimits) -> Self {
        Self {
            limits,
            preface_left: PREFACE_LEN,
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
            header_block: None,
            kind: 0,
            stream: 0,
            payload: [0; 4],
            payload_len: 0,
            streams_opened: 0,
            resets: 0,
            window_updates: 0,
            outbound: Outbound::default(),
            empty_in_a_row: 0,
            tokens: f64::from(limits.control_frame_burst),
            refilled_at: Instant::now(),
            broken: None,
        }
    }

    /// The limit broken so far, if any.
    pub fn broken(&self) -> Option<Abuse> {
        self.broken
    }

    /// Whether the last frame seen left a header block open (HEADERS or CONTINUATION without
    /// END_HEADERS): when `h2` gives up on the connection then, it was for too many
    /// CONTINUATION frames.
    pub fn in_header_block(&self) -> bool {
        self.header_block.is_some()
    }

    /// Follows `bytes`, the next bytes received. Returns the first limit broken (and keeps
    /// returning it).
    pub fn inspect(&mut self, mut bytes: &[u8]) -> Option<Abuse> {
        while !bytes.is_empty() && self.broken.is_none() {
            if self.preface_left > 0 {
                let skip = self.preface_left.min(bytes.len());
                self.preface_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                if matches!(self.kind, WINDOW_UPDATE | PRIORITY) {
                    let keep = (4 - self.payload_len).min(skip);
                    self.payload[self.payload_len..self.payload_len + keep]
                        .copy_from_slice(&bytes[..keep]);
                    self.payload_len += keep;
                }
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                if self.payload_left == 0 {
                    self.broken = match self.kind {
                        WINDOW_UPDATE => self.window_update().err(),
                        PRIORITY => self.priority().err(),
                        _ => None,
                    };
                }
                continue;
            }
            let take = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 9 {
                self.header_len = 0;
                let length =
                    u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
                let kind = self.header[3];
                let flags = self.header[4];
                let stream = u32::from_be_bytes([
                    self.header[5],
                    self.header[6],
                    self.header[7],
                    self.header[8],
                ]) & 0x7fff_ffff;
                self.payload_left = length as usize;
                self.kind = kind;
                self.stream = stream;
                self.payload_len = 0;
                self.broken = self.frame(kind, flags, stream, length).err();
            }
        }
        self.broken
    }

    /// Accounts for one frame header.
    fn frame(&mut self, kind: u8, flags: u8, stream: u32, length: u32) -> Result<(), Abuse> {
        match kind {
            HEADERS => {
                if self.header_block.is_none() && stream % 2 == 1 {
                    self.streams_opened += 1;
                }
                self.count_empty(length == 0 && flags & (FLAG_END_STREAM | FLAG_END_HEADERS) == 0)?;
                if flags & FLAG_END_HEADERS == 0 {
                    self.header_block = Some(length);
                    self.check_header_block(length)?;
                }
            }
            CONTINUATION => {
                self.count_empty(length == 0 && flags & FLAG_END_HEADERS == 0)?;
                let so_far = self.header_block.unwrap_or(0).saturating_add(length);
                self.check_header_block(so_far)?;
                self.header_block = (flags & FLAG_END_HEADERS == 0).then_some(so_far);
            }
            DATA => self.count_empty(length == 0 && flags & FLAG_END_STREAM == 0)?,
            RST_STREAM => self.count_reset(Abuse::RapidReset)?,
            // Counted once its increment is read (`window_update`); a frame of the wrong size is
            // a connection error h2 answers with GOAWAY.
            WINDOW_UPDATE if length == 4 => {}
            // The frames of a header block, and ones only a server sends (h2 closes the
            // connection for those), cost nothing more here.
            WINDOW_UPDATE | GOAWAY | PUSH_PROMISE => {}
            // PING and SETTINGS ACKs count too: a client sends one per frame the server sent,
            // and an unsolicited flood of them costs as much as PINGs.
            PING | SETTINGS | PRIORITY => {
                self.empty_in_a_row = 0;
                self.spend_control_token(Abuse::ControlFlood)?;
            }
            // Unknown frame types are parsed and dropped, never acted on.
            _ => {
                self.empty_in_a_row = 0;
                self.spend_control_token(Abuse::ControlFlood)?;
            }
        }
        Ok(())
    }

    /// Follows `bytes`, the next bytes the server wrote on this connection.
    pub fn outbound(&mut self, bytes: &[u8]) {
        self.outbound.follow(bytes);
    }

    /// Accounts for a WINDOW_UPDATE, once its increment is read.
    fn window_update(&mut self) -> Result<(), Abuse> {
        let increment = u32::from_be_bytes(self.payload) & 0x7fff_ffff;
        // A zero increment on a stream is a stream error (RFC 9113 §6.9): the server resets it.
        // (On the connection it is a connection error, which ends the connection anyway.)
        if increment == 0 && self.stream != 0 {
            self.count_reset(Abuse::MadeYouReset)?;
        }
        self.window_updates += 1;
        let explained = FREE_WINDOW_UPDATES.saturating_add(
            self.outbound
                .data_frames
                .saturating_mul(WINDOW_UPDATES_PER_DATA_FRAME),
        );
        if self.window_updates > explained {
            self.spend_control_token(Abuse::WindowUpdateFlood)?;
        }
        Ok(())
    }

    /// Accounts for a PRIORITY frame's dependency, once read (the frame itself spent a control
    /// token): a stream that depends on itself is a stream error (RFC 9113 §5.3.1), which the
    /// server answers with RST_STREAM.
    fn priority(&mut self) -> Result<(), Abuse> {
        let dependency = u32::from_be_bytes(self.payload) & 0x7fff_ffff;
        if self.payload_len == 4 && self.stream != 0 && dependency == self.stream {
            self.count_reset(Abuse::MadeYouReset)?;
        }
        Ok(())
    }

    /// Counts a reset, sent by the client or provoked from the server; `abuse` names the limit
    /// if this one breaks it.
    fn count_reset(&mut self, abuse: Abuse) -> Result<(), Abuse> {
        self.resets += 1;
        // Rapid reset: many resets, and most streams end that way. A client that cancels now
        // and then never gets here.
        if self.resets > self.limits.max_resets
            && self.resets.saturating_mul(2) > self.streams_opened
        {
            return Err(abuse);
        }
        Ok(())
    }

    /// Counts frames that carry nothing, in a row.
    fn count_empty(&mut self, is_empty: bool) -> Result<(), Abuse> {
        if !is_empty {
            self.empty_in_a_row = 0;
            return Ok(());
        }
        self.empty_in_a_row += 1;
        if self.empty_in_a_row > self.limits.max_consecutive_empty_frames {
            return Err(Abuse::EmptyFrames);
        }
        Ok(())
    }

    fn check_header_block(&self, bytes: u32) -> Result<(), Abuse> {
        if bytes > self.limits.max_header_block {
            return Err(Abuse::ContinuationFlood);
        }
        Ok(())
    }

    /// Spends a control-frame token; `abuse` names the limit if none is left.
    fn spend_control_token(&mut self, abuse: Abuse) -> Result<(), Abuse> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.refilled_at = now;
        let burst = f64::from(self.limits.control_frame_burst);
        self.tokens =
            (self.tokens + elapsed * f64::from(self.limits.control_frames_per_second)).min(burst);
        if self.tokens < 1.0 {
            return Err(abuse);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// Follows the frame headers the server writes, counting its DATA frames.
#[derive(Debug, Default)]
struct Outbound {
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
    /// DATA frames with a payload.
    data_frames: u64,
}

impl Outbound {
    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = self.payload_left.min(bytes.len());
                self.payload_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == 9 {
                self.header_len = 0;
                let length =
                    u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
                self.payload_left = length as usize;
                if self.header[3] == DATA && length > 0 {
                    self.data_frames += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG_ACK: u8 = 0x1;

    const LIMITS: GuardLimits = GuardLimits {
        max_resets: 10,
        control_frames_per_second: 10,
        control_frame_burst: 20,
        max_consecutive_empty_frames: 3,
        max_header_block: 1024,
    };

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn guard_after_preface() -> FrameGuard {
        let mut guard = FrameGuard::new(LIMITS);
        assert_eq!(guard.inspect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        guard
    }

    #[test]
    fn ordinary_traffic_passes_in_any_split() {
        let mut bytes = Vec::new();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        for stream in (1..200).step_by(2) {
            bytes.extend(frame(HEADERS, FLAG_END_HEADERS, stream, &[0x82; 10]));
            bytes.extend(frame(DATA, FLAG_END_STREAM, stream, &[7; 100]));
        }
        // A few cancels are normal.
        bytes.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
        for chunk_size in [1, 7, 9, 64, 4096] {
            let mut guard = guard_after_preface();
            for chunk in bytes.chunks(chunk_size) {
                assert_eq!(guard.inspect(chunk), None, "chunk size {chunk_size}");
            }
        }
    }

    #[test]
    fn rapid_reset_is_caught() {
        let mut guard = guard_after_preface();
        let mut found = None;
        for stream in (1..100).step_by(2) {
            found = found.or(guard.inspect(&frame(
                HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                stream,
                &[0x82],
            )));
            found = found.or(guard.inspect(&frame(RST_STREAM, 0, stream, &[0, 0, 0, 8])));
        }
        assert_eq!(found, Some(Abuse::RapidReset));
        assert_eq!(
            guard.resets,
            LIMITS.max_resets + 1,
            "caught at the first reset past the tolerance"
        );
    }

    #[test]
    fn ping_flood_is_caught() {
        let mut guard = guard_after_preface();
        let mut found = None;
        for _ in 0..25 {
            found = found.or(guard.inspect(&frame(PING, 0, 0, &[0; 8])));
        }
        assert_eq!(found, Some(Abuse::ControlFlood));
    }

    #[test]
    fn ping_acks_and_unknown_frame_types_spend_the_control_budget() {
        for kind in [PING, 0xfa] {
            let flags = if kind == PING { FLAG_ACK } else { 0 };
            let mut guard = guard_after_preface();
            let mut found = None;
            for _ in 0..25 {
                found = found.or(guard.inspect(&frame(kind, flags, 0, &[0; 8])));
            }
            assert_eq!(found, Some(Abuse::ControlFlood), "frame type {kind}");
        }
    }

    fn window_update(stream: u32, increment: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
    }

    #[test]
    fn window_update_flood_is_caught() {
        let mut guard = guard_after_preface();
        let free = FREE_WINDOW_UPDATES as usize;
        let mut found = None;
        for _ in 0..free + 25 {
            found = found.or(guard.inspect(&window_update(0, 1)));
        }
        assert_eq!(found, Some(Abuse::WindowUpdateFlood));
        assert_eq!(
            guard.window_updates,
            FREE_WINDOW_UPDATES + u64::from(LIMITS.control_frame_burst) + 1,
            "caught when the free updates and the burst are spent"
        );
    }

    #[test]
    fn window_updates_answering_data_sent_are_free() {
        let mut guard = guard_after_preface();
        let mut sent = frame(SETTINGS, 0, 0, &[0; 6]);
        sent.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &[0x88]));
        let mut received = frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &[0x82]);
        for _ in 0..1000 {
            sent.extend(frame(DATA, 0, 1, &[0; 100]));
            received.extend(window_update(1, 100));
            received.extend(window_update(0, 100));
        }
        // The server's writes, then the client's updates, in odd pieces.
        for out in sent.chunks(77) {
            guard.outbound(out);
        }
        for inb in received.chunks(5) {
            assert_eq!(guard.inspect(inb), None);
        }
        assert_eq!(guard.outbound.data_frames, 1000);
        assert_eq!(guard.window_updates, 2000);
    }

    #[test]
    fn zero_increment_window_updates_are_made_you_reset() {
        let mut guard = guard_after_preface();
        let mut found = None;
        for stream in (1..100).step_by(2) {
            found = found.or(guard.inspect(&frame(HEADERS, FLAG_END_HEADERS, stream, &[0x83])));
            // Split inside the increment: it is read across reads.
            let update = window_update(stream, 0);
            found = found.or(guard.inspect(&update[..11]));
            found = found.or(guard.inspect(&update[11..]));
        }
        assert_eq!(found, Some(Abuse::MadeYouReset));
        assert_eq!(guard.resets, LIMITS.max_resets + 1);
    }

    #[test]
    fn nonzero_window_updates_on_streams_are_not_resets() {
        let mut guard = guard_after_preface();
        for stream in (1..100).step_by(2) {
            assert_eq!(
                guard.inspect(&frame(HEADERS, FLAG_END_HEADERS, stream, &[0x83])),
                None
            );
            assert_eq!(guard.inspect(&window_update(stream, 1)), None);
        }
        assert_eq!(guard.resets, 0);
    }

    #[test]
    fn self_dependent_priority_frames_are_made_you_reset() {
        let mut guard = guard_after_preface();
        let mut found = None;
        for stream in (1..25).step_by(2) {
            found = found.or(guard.inspect(&frame(HEADERS, FLAG_END_HEADERS, stream, &[0x83])));
            // Depends on stream 1: a reset for stream 1 only. (13 PRIORITY frames stay within
            // the burst of 20.)
            found = found.or(guard.inspect(&frame(PRIORITY, 0, stream, &[0, 0, 0, 1, 16])));
        }
        assert_eq!(found, None);
        assert_eq!(guard.resets, 1);
        let mut guard = guard_after_preface();
        for stream in (1..25).step_by(2) {
            found = found.or(guard.inspect(&frame(HEADERS, FLAG_END_HEADERS, stream, &[0x83])));
            let mut dependency = stream.to_be_bytes().to_vec();
            dependency.push(16);
            let priority = frame(PRIORITY, 0, stream, &dependency);
            // Split inside the dependency.
            found = found.or(guard.inspect(&priority[..10]));
            found = found.or(guard.inspect(&priority[10..]));
        }
        assert_eq!(found, Some(Abuse::MadeYouReset));
    }

    #[test]
    fn open_header_blocks_are_reported() {
        let mut guard = guard_after_preface();
        guard.inspect(&frame(HEADERS, 0, 1, &[0x82; 10]));
        assert!(guard.in_header_block());
        guard.inspect(&frame(CONTINUATION, 0, 1, &[0x82; 10]));
        assert!(guard.in_header_block());
        guard.inspect(&frame(CONTINUATION, FLAG_END_HEADERS, 1, &[0x82; 10]));
        assert!(!guard.in_header_block());
        guard.inspect(&frame(HEADERS, FLAG_END_HEADERS, 3, &[0x82]));
        assert!(!guard.in_header_block());
    }

    #[test]
    fn continuation_flood_is_caught() {
        let mut guard = guard_after_preface();
        let mut found = guard.inspect(&frame(HEADERS, 0, 1, &[0x82; 100]));
        for _ in 0..20 {
            found = found.or(guard.inspect(&frame(CONTINUATION, 0, 1, &[0; 100])));
        }
        assert_eq!(found, Some(Abuse::ContinuationFlood));
    }

    #[test]
    fn empty_frames_are_caught() {
        let mut guard = guard_after_preface();
        guard.inspect(&frame(HEADERS, FLAG_END_HEADERS, 1, &[0x82]));
        let mut found = None;
        for _ in 0..5 {
            found = found.or(guard.inspect(&frame(DATA, 0, 1, &[])));
        }
        assert_eq!(found, Some(Abuse::EmptyFrames));
    }
}
