//! The exporter: one thread per tracing configuration, off every worker, sending batches of
//! spans to an OTLP/HTTP collector (`POST /v1/traces`, `application/x-protobuf`) over blocking
//! std sockets.
//!
//! - **Queue**: workers hand batches over a bounded channel (full: the worker drops the batch
//!   and counts it); the exporter keeps at most `queue_size` spans waiting and drops (and
//!   counts) what does not fit.
//! - **Batching**: a request goes out once `batch_size` spans wait, or `batch_timeout` after
//!   the oldest of them arrived.
//! - **Retries**: on a connection error and on the statuses OTLP calls retryable (429, 502,
//!   503, 504), up to [`ATTEMPTS`] tries with exponential backoff and jitter (a `Retry-After`
//!   in seconds is honoured, within [`MAX_BACKOFF`]); the queue keeps filling (and dropping)
//!   meanwhile. Any other status drops the request's spans. Every failed try counts in
//!   `export_failures`, every new try in `export_retries`.
//! - The thread ends when the last sender is gone (the config changed or the process stops),
//!   after one last try at what it holds.
//!
//! OTLP/gRPC is not offered: it would need an HTTP/2 client on this thread (the workers' one
//! runs on their runtimes); collectors take OTLP/HTTP on port 4318 alike.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::TraceStats;
use super::otlp::{self, Resource};
use super::span::Batch;
use crate::log_budget::LogBudget;

/// Batches in flight from the workers to the exporter before workers drop theirs.
const CHANNEL_BATCHES: usize = 64;
/// Emptied batches kept for the workers to reuse.
const RECYCLED: usize = 16;
/// Tries per export request.
pub const ATTEMPTS: u32 = 5;
/// The first backoff; doubled per try.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How the exporter works, from `[telemetry.tracing]`.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The collector's OTLP/HTTP address.
    pub endpoint: SocketAddr,
    /// Spans per export request (at most).
    pub batch_size: usize,
    /// The longest a span waits for a batch to fill.
    pub batch_timeout: Duration,
    /// Spans waiting in the exporter before new ones are dropped.
    pub queue_size: usize,
    /// `service.name`.
    pub service_name: String,
    /// The node (`host.name`, `service.instance.id`).
    pub node: String,
}

/// Where workers send their spans; cheap to clone.
#[derive(Debug, Clone)]
pub struct TraceSink {
    sender: flume::Sender<Batch>,
    recycled: flume::Receiver<Batch>,
    stats: Arc<TraceStats>,
}

impl TraceSink {
    /// Starts the exporter thread for `settings`, counting into `stats`.
    pub fn start(settings: ExportSettings, stats: Arc<TraceStats>) -> std::io::Result<Self> {
        let (sender, receiver) = flume::bounded(CHANNEL_BATCHES);
        let (recycle, recycled) = flume::bounded(RECYCLED);
        let exporter = Exporter {
            resource: Resource {
                service_name: settings.service_name.clone(),
                service_version: env!("CARGO_PKG_VERSION"),
                node: settings.node.clone(),
            },
            settings,
            stats: Arc::clone(&stats),
            receiver,
            recycle,
            pending: VecDeque::new(),
            queued: 0,
            oldest: None,
            connection: None,
            body: Vec::new(),
            scratch: String::new(),
            closed: false,
            rng: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1,
            log: LogBudget::new(),
        };
        std::thread::Builder::new()
            .name("ringmesh-otlp".into())
            .spawn(move || exporter.run())?;
        Ok(Self {
            sender,
            recycled,
            stats,
        })
    }

    /// Whether `other` feeds the same exporter.
    pub fn same(&self, other: &Self) -> bool {
        self.sender.same_channel(&other.sender)
    }

    /// An emptied batch to fill, if the exporter returned one.
    pub fn recycled(&self) -> Option<Batch> {
        self.recycled.try_recv().ok()
    }

    /// Hands `batch` to the exporter from worker `worker`, or drops and counts it.
    pub fn send(&self, batch: Batch, worker: usize) {
        let spans = batch.spans.len() as u64;
        if self.sender.try_send(batch).is_err()
            && let Some(counters) = self.stats.workers.iter().nth(worker)
        {
            counters.dropped.add(spans);
        }
    }
}

struct Exporter {
    settings: ExportSettings,
    resource: Resource,
    stats: Arc<TraceStats>,
    receiver: flume::Receiver<Batch>,
    recycle: flume::Sender<Batch>,
    /// Batches waiting, each with the index of its first span not yet sent.
    pending: VecDeque<(Batch, usize)>,
    /// Spans waiting.
    queued: usize,
    /// When the oldest waiting span arrived.
    oldest: Option<Instant>,
    connection: Option<TcpStream>,
    body: Vec<u8>,
    scratch: String,
    /// Every sender is gone.
    closed: bool,
    /// xorshift state for the backoff's jitter.
    rng: u64,
    /// A collector that refuses every batch must not flood the log.
    log: LogBudget,
}

/// How one export try ended.
enum Outcome {
    Accepted,
    /// Worth another try, after at least this long when the collector said so.
    Retry(Option<Duration>),
    Refused(u16),
}

impl Exporter {
    fn run(mut self) {
        loop {
            let wait = match self.oldest {
                Some(oldest) => {
                    (oldest + self.settings.batch_timeout).saturating_duration_since(Instant::now())
                }
                None => Duration::from_secs(3600),
            };
            match self.receiver.recv_timeout(wait) {
                Ok(batch) => self.admit(batch),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => self.closed = true,
            }
            while self.queued > 0
                && (self.queued >= self.settings.batch_size
                    || self.closed
                    || self
                        .oldest
                        .is_some_and(|t| t.elapsed() >= self.settings.batch_timeout))
            {
                self.export_one();
            }
            if self.closed {
                return;
            }
        }
    }

    /// Queues `batch`, dropping (and counting) the spans beyond `queue_size`.
    fn admit(&mut self, mut batch: Batch) {
        let room = self.settings.queue_size.saturating_sub(self.queued);
        if batch.spans.len() > room {
            let dropped = batch.spans.len() - room;
            self.stats
                .export_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
            batch.spans.truncate(room);
        }
        if batch.spans.is_empty() {
            self.give_back(batch);
            return;
        }
        self.queued += batch.spans.len();
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push_back((batch, 0));
    }

    fn give_back(&self, mut batch: Batch) {
        batch.clear();
        let _ = self.recycle.try_send(batch);
    }

    /// Sends up to `batch_size` waiting spans, with retries; they are gone afterwards, exported
    /// or dropped.
    fn export_one(&mut self) {
        let mut ranges = Vec::new();
        let mut count = 0;
        for (index, (batch, first)) in self.pending.iter().enumerate() {
            if count >= self.settings.batch_size {
                break;
            }
            let take = (batch.spans.len() - first).min(self.settings.batch_size - count);
            ranges.push((index, *first..*first + take));
            count += take;
        }
        otlp::encode(
            &self.resource,
            ranges
                .iter()
                .filter_map(|(i, range)| Some((&self.pending.get(*i)?.0, range.clone()))),
            &mut self.body,
            &mut self.scratch,
        );
        // The spans leave the queue now: what arrives during the retries has room.
        for (index, range) in ranges.iter().rev() {
            if let Some((batch, first)) = self.pending.get_mut(*index) {
                *first = range.end;
                if *first >= batch.spans.len()
                    && let Some((batch, _)) = self.pending.remove(*index)
                {
                    self.give_back(batch);
                }
            }
        }
        self.queued -= count;
        self.oldest = (self.queued > 0).then(Instant::now);
        self.deliver(count as u64);
    }

    /// Posts the encoded body, trying again on retryable failures.
    fn deliver(&mut self, spans: u64) {
        for attempt in 0..ATTEMPTS {
            let outcome = self.post();
            let after = match outcome {
                Outcome::Accepted => {
                    self.stats.exported.fetch_add(spans, Ordering::Relaxed);
                    return;
                }
                Outcome::Refused(status) => {
                    self.stats.export_failures.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .export_dropped
                        .fetch_add(spans, Ordering::Relaxed);
                    if let Some(skipped) = self.log.admit() {
                        warn!(
                            status,
                            spans, skipped, "the OTLP collector refused spans; dropped"
                        );
                    }
                    return;
                }
                Outcome::Retry(after) => {
                    self.stats.export_failures.fetch_add(1, Ordering::Relaxed);
                    after
                }
            };
            if attempt + 1 == ATTEMPTS || self.closed {
                break;
            }
            self.stats.export_retries.fetch_add(1, Ordering::Relaxed);
            let backoff = FIRST_BACKOFF.saturating_mul(1 << attempt).min(MAX_BACKOFF);
            // Full jitter over the upper half, so that several proxies do not retry in step.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let jitter = Duration::from_nanos(self.rng % (backoff.as_nanos() as u64 / 2 + 1));
            let wait = after.unwrap_or(backoff / 2 + jitter).min(MAX_BACKOFF);
            self.backoff(wait);
        }
        if let Some(skipped) = self.log.admit() {
            warn!(
                endpoint = %self.settings.endpoint,
                spans,
                skipped,
                "OTLP export failed after retries; spans dropped"
            );
        }
        self.stats
            .export_dropped
            .fetch_add(spans, Ordering::Relaxed);
    }

    /// Waits `wait`, still taking batches in (and dropping what the queue cannot hold).
    fn backoff(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        while !self.closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.receiver.recv_timeout(left) {
                Ok(batch) => self.admit(batch),
                Err(flume::RecvTimeoutError::Timeout) => return,
                Err(flume::RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// One HTTP/1.1 request on the kept connection (or a new one).
    fn post(&mut self) -> Outcome {
        if self.connection.is_none() {
            match TcpStream::connect_timeout(&self.settings.endpoint, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = stream.set_nodelay(true);
                    self.connection = Some(stream);
                }
                Err(e) => {
                    debug!(endpoint = %self.settings.endpoint, error = %e, "OTLP connect failed");
                    return Outcome::Retry(None);
                }
            }
        }
        let Some(stream) = self.connection.as_mut() else {
            return Outcome::Retry(None);
        };
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\n\
             content-length: {}\r\nuser-agent: ringmesh/{}\r\n\r\n",
            self.settings.endpoint,
            self.body.len(),
            env!("CARGO_PKG_VERSION"),
        );
        let sent = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&self.body));
        let response = sent.and_then(|()| read_response(stream));
        match response {
            Err(e) => {
                debug!(endpoint = %self.settings.endpoint, error = %e, "OTLP export failed");
                self.connection = None;
                Outcome::Retry(None)
            }
            Ok(response) => {
                if !response.keep_alive {
                    self.connection = None;
                }
                match response.status {
                    200..=299 => Outcome::Accepted,
                    429 | 502 | 503 | 504 => Outcome::Retry(response.retry_after),
                    status => Outcome::Refused(status),
                }
            }
        }
    }
}

/// What the exporter needs of a collector's answer.
struct Response {
    status: u16,
    keep_alive: bool,
    retry_after: Option<Duration>,
}

/// How a response's body ends.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads a response head and its body (by `content-length`; a body framed otherwise is read to
/// the end and the connection not kept).
fn read_response(stream: &mut TcpStream) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (status, keep_alive, retry_after, length, head_len) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("the collector closed before answering"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                let length = header("content-length")
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .or((status == 204 || status == 304).then_some(0))
                    .filter(|_| !chunked);
                let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    || response.version == Some(0);
                let retry_after = header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let framing = match length {
                    Some(length) => Framing::Length(length),
                    None if chunked => Framing::Chunked,
                    None => Framing::UntilClose,
                };
                break (
                    status,
                    !close && length.is_some(),
                    retry_after,
                    framing,
                    head_len,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            _ => return Err(bad("malformed response from the collector")),
        }
    };
    match length {
        Framing::Length(length) => {
            let mut have = buf.len() - head_len;
            while have < length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(bad("the collector closed mid-body"));
                }
                have += n;
            }
        }
        Framing::Chunked => {
            // The body is not needed: read to its last chunk; the connection is not kept.
            let mut tail = buf.split_off(head_len);
            while !tail.ends_with(b"0\r\n\r\n") && tail.len() < 1024 * 1024 {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&chunk[..n]);
            }
        }
        Framing::UntilClose => {
            // Read to the end (bounded by the read timeout); the connection is not kept.
            let mut total = 0usize;
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
                if total > 1024 * 1024 {
                    break;
                }
            }
        }
    }
    Ok(Response {
        status,
        keep_alive,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::time::Instant;

    use super::*;
    use crate::trace::context::{SpanId, TraceId};
    use crate::trace::span::{SpanKind, SpanRecord};

    /// A collector that answers its requests with `statuses` in turn (keeping the connection
    /// open), and counts them.
    fn collector(statuses: &'static [u16]) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&seen);
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            for &status in statuses {
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let reply =
                    format!("HTTP/1.1 {status} X\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n");
                if writer.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
        });
        (address, seen)
    }

    fn sink(endpoint: SocketAddr) -> (TraceSink, Arc<TraceStats>) {
        let stats = Arc::new(TraceStats::new(1));
        let settings = ExportSettings {
            endpoint,
            batch_size: 1,
            batch_timeout: Duration::from_millis(10),
            queue_size: 4,
            service_name: "test".into(),
            node: "node".into(),
        };
        (
            TraceSink::start(settings, Arc::clone(&stats)).expect("start the exporter"),
            stats,
        )
    }

    fn one_span() -> Batch {
        let span = SpanRecord::new(
            TraceId(1),
            SpanId(2),
            None,
            SpanKind::Server,
            Instant::now(),
        );
        Batch {
            spans: vec![span],
            text: Vec::new(),
        }
    }

    fn wait(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn retryable_statuses_are_retried_and_the_span_exported() {
        let (address, seen) = collector(&[503, 429, 200]);
        let (sink, stats) = sink(address);
        sink.send(one_span(), 0);
        wait("the export", || stats.exported.load(Ordering::Relaxed) == 1);
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        assert_eq!(stats.export_failures.load(Ordering::Relaxed), 2);
        assert_eq!(stats.export_retries.load(Ordering::Relaxed), 2);
        assert_eq!(stats.export_dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn other_statuses_drop_without_a_retry() {
        let (address, seen) = collector(&[400, 200]);
        let (sink, stats) = sink(address);
        sink.send(one_span(), 0);
        wait("the drop", || {
            stats.export_dropped.load(Ordering::Relaxed) == 1
        });
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(stats.export_retries.load(Ordering::Relaxed), 0);
        assert_eq!(stats.exported.load(Ordering::Relaxed), 0);
    }
}
