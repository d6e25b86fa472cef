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

use crate::snapshot::GuardLimits;
use std::time::Instant;

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// The client connection preface, which precedes the first frame.
const PREFACE_LEN: usize = 24;

/// Which limit a connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    /// More than half of its streams were reset by the client, past the tolerance.
    RapidReset,
    /// PING/SETTINGS/PRIORITY faster than the budget.
    ControlFlood,
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
    streams_opened: u32,
    resets: u32,
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
            streams_opened: 0,
            resets: 0,
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
                let kind = self.header[3];
                let flags = self.header[4];
                let stream = u32::from_be_bytes([
                    self.header[5],
                    self.header[6],
                    self.header[7],
                    self.header[8],
                ]) & 0x7fff_ffff;
                self.payload_left = length as usize;
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
            RST_STREAM => {
                self.resets += 1;
                // Rapid reset: many resets, and most streams end that way. A client that cancels
                // now and then never gets here.
                if self.resets > self.limits.max_resets
                    && self.resets.saturating_mul(2) > self.streams_opened
                {
                    return Err(Abuse::RapidReset);
                }
            }
            PING | SETTINGS if flags & FLAG_ACK != 0 => {}
            // WINDOW_UPDATE is not budgeted: a busy streaming client sends one for nearly every
            // message it reads, so a fixed rate would cut off legitimate gRPC streams. Window
            // overflow is h2's to reject (FLOW_CONTROL_ERROR).
            PING | SETTINGS | PRIORITY => {
                self.empty_in_a_row = 0;
                self.spend_control_token()?;
            }
            _ => {}
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

    fn spend_control_token(&mut self) -> Result<(), Abuse> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.refilled_at = now;
        let burst = f64::from(self.limits.control_frame_burst);
        self.tokens =
            (self.tokens + elapsed * f64::from(self.limits.control_frames_per_second)).min(burst);
        if self.tokens < 1.0 {
            return Err(Abuse::ControlFlood);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ping_flood_is_caught_and_acks_are_free() {
        let mut guard = guard_after_preface();
        for _ in 0..100 {
            assert_eq!(guard.inspect(&frame(PING, FLAG_ACK, 0, &[0; 8])), None);
        }
        let mut found = None;
        for _ in 0..25 {
            found = found.or(guard.inspect(&frame(PING, 0, 0, &[0; 8])));
        }
        assert_eq!(found, Some(Abuse::ControlFlood));
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
