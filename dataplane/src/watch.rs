//! `--watch`: reload when the config file changes.
//!
//! A thread polls the file (portable, no inotify dependency, and it follows editors that replace
//! the file by renaming a new one over it). When its size, modification time or inode change, the
//! content is hashed; a new hash is acted on once it has stayed the same for [`SETTLE`], so a file
//! written in several steps is reloaded once, complete. The reload itself is an ordinary
//! `ControlRequest::Reload` of the file: a broken file is rejected and counted like any other.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::reload::{ConfigSource, ControlRequest};

/// How often the file is looked at.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// How long a change must stay unchanged before it is reloaded.
pub const SETTLE: Duration = Duration::from_millis(250);

/// What is cheap to compare on every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified_ns: i64,
    inode: u64,
}

/// Starts the watcher thread for `path`; it ends when the control thread is gone.
pub fn spawn(path: PathBuf, control: flume::Sender<ControlRequest>) -> std::io::Result<()> {
    let initial = std::fs::read(&path).map(|text| hash(&text)).ok();
    std::thread::Builder::new()
        .name("ringmesh-watch".into())
        .spawn(move || {
            info!(file = %path.display(), "watching the config file for changes");
            let mut watcher = Watcher::new(initial);
            loop {
                std::thread::sleep(INTERVAL);
                let stamp = stamp(&path);
                let content = || std::fs::read(&path).ok().map(|text| hash(&text));
                if watcher.poll(Instant::now(), stamp, content) {
                    info!(file = %path.display(), "config file changed: reloading");
                    let request = ControlRequest::Reload {
                        source: ConfigSource::File,
                        origin: "--watch",
                        reply: None,
                    };
                    if control.send(request).is_err() {
                        return;
                    }
                }
                if control.is_disconnected() {
                    return;
                }
            }
        })
        .map(drop)
        .inspect_err(|e| warn!(error = %e, "cannot start the config watcher"))
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: meta.len(),
        modified_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        inode: meta.ino(),
    })
}

fn hash(text: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text)
}

/// The change detector, apart from the file system so that it can be tested.
#[derive(Debug)]
struct Watcher {
    /// Hash of the content last reloaded (or found at start).
    applied: Option<u64>,
    /// The stamp seen at the last poll.
    last_stamp: Option<Stamp>,
    /// A changed content waiting to settle: its hash and since when it is unchanged.
    pending: Option<(u64, Instant)>,
}

impl Watcher {
    fn new(applied: Option<u64>) -> Self {
        Self {
            applied,
            last_stamp: None,
            pending: None,
        }
    }

    /// One poll: returns true when the file should be reloaded now. `content` hashes the file and
    /// is called only when the stamp moved or a change is settling.
    fn poll(
        &mut self,
        now: Instant,
        stamp: Option<Stamp>,
        content: impl FnOnce() -> Option<u64>,
    ) -> bool {
        let Some(stamp) = stamp else {
            // Missing for a moment (mid-rename) or deleted: wait for it to come back.
            self.last_stamp = None;
            return false;
        };
        let moved = self.last_stamp != Some(stamp);
        self.last_stamp = Some(stamp);
        if !moved && self.pending.is_none() {
            return false;
        }
        let Some(current) = content() else {
            return false;
        };
        if Some(current) == self.applied {
            self.pending = None;
            return false;
        }
        match self.pending {
            Some((hash, since)) if hash == current && !moved => {
                if now.duration_since(since) >= SETTLE {
                    self.pending = None;
                    self.applied = Some(current);
                    return true;
                }
            }
            _ => self.pending = Some((current, now)),
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(len: u64) -> Option<Stamp> {
        Some(Stamp {
            len,
            modified_ns: len as i64,
            inode: 1,
        })
    }

    #[test]
    fn a_change_is_reloaded_once_after_it_settles() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Watcher::new(Some(1));
        assert!(!w.poll(ms(0), at(10), || Some(1)), "unchanged content");
        assert!(!w.poll(ms(100), at(11), || Some(2)), "changed: settling");
        assert!(
            !w.poll(ms(200), at(12), || Some(3)),
            "changed again: settling anew"
        );
        assert!(!w.poll(ms(300), at(12), || Some(3)));
        assert!(w.poll(ms(500), at(12), || Some(3)), "settled");
        assert!(!w.poll(ms(600), at(12), || Some(3)), "reloaded once");
        assert!(
            !w.poll(ms(700), at(13), || Some(3)),
            "touched, same content"
        );
    }

    #[test]
    fn a_missing_file_waits_and_a_revert_cancels() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = Watcher::new(Some(1));
        assert!(!w.poll(ms(0), at(10), || Some(1)));
        assert!(!w.poll(ms(100), None, || unreachable!("no file, no read")));
        assert!(!w.poll(ms(200), at(20), || Some(2)));
        assert!(
            !w.poll(ms(300), at(10), || Some(1)),
            "back to the applied content"
        );
        assert!(!w.poll(ms(900), at(10), || Some(1)));
    }
}
