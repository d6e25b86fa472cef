//! Watching a config file or directory and keeping a fleet of proxies on its latest valid
//! version.
//!
//! The watch polls (portable, no inotify dependency): every `interval` it reads the source and
//! hashes it. A change is acted on once the content has stayed the same for `settle`, so an editor
//! writing in several steps causes one push, not several. The new text is validated here first; an
//! invalid one is reported and never pushed, and the fleet stays on the last valid version. A valid
//! one becomes the next *version* and is pushed to every proxy at once. Proxies that do not apply
//! it (down, unreachable, rejecting) are retried with exponential backoff until they do or a newer
//! version replaces it. Each proxy's acknowledged generation is reported as it comes in.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::client::Target;
use crate::push::{self, Outcome, PushOptions, PushResult};
use crate::source::Source;

/// How to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How often the source is read.
    pub interval: Duration,
    /// How long a change must stay unchanged before it is pushed.
    pub settle: Duration,
    /// First retry delay after a failed push; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Also check referenced files (certificates...) here before pushing.
    pub check_files: bool,
    /// Token and timeout of each push.
    pub push: PushOptions,
}

/// Something the watch did, for the caller to report.
#[derive(Debug)]
pub enum Event<'a> {
    /// The source changed but is invalid; nothing was pushed.
    Invalid {
        /// The errors, each with its file and line.
        errors: Vec<String>,
    },
    /// The source could not be read.
    Unreadable(String),
    /// A valid change became `version`.
    NewVersion {
        /// Version number, counted by this watch from 1.
        version: u64,
    },
    /// Results of one push round of `version` (to the proxies that were due).
    Pushed {
        /// The version pushed.
        version: u64,
        /// One result per proxy pushed to in this round.
        results: &'a [PushResult],
        /// Proxies running `version`, out of all.
        applied: usize,
        /// All proxies.
        total: usize,
    },
}

/// Where one proxy stands.
#[derive(Debug, Clone)]
pub struct TargetState {
    /// The proxy.
    pub target: Target,
    /// The latest version it applied, and the generation it reported for it.
    pub acknowledged: Option<(u64, u64)>,
    next_attempt: Instant,
    backoff: Duration,
}

/// A running watch; drive it with [`Watch::tick`] (or [`Watch::run`]).
#[derive(Debug)]
pub struct Watch {
    path: PathBuf,
    options: WatchOptions,
    targets: Vec<TargetState>,
    /// Hash of the content last acted on (pushed or reported invalid).
    handled: Option<u64>,
    /// A change not yet settled: its hash and when it was first seen.
    candidate: Option<(u64, Instant)>,
    /// The version being pushed and its text.
    version: u64,
    text: Option<String>,
}

impl Watch {
    /// A watch of `path` (a file or a directory of `*.toml`) for `targets`. Nothing is read until
    /// the first tick, which pushes the current content.
    pub fn new(path: &Path, targets: Vec<Target>, options: WatchOptions) -> Self {
        let now = Instant::now();
        Self {
            path: path.to_path_buf(),
            targets: targets
                .into_iter()
                .map(|target| TargetState {
                    target,
                    acknowledged: None,
                    next_attempt: now,
                    backoff: options.min_backoff,
                })
                .collect(),
            options,
            handled: None,
            candidate: None,
            version: 0,
            text: None,
        }
    }

    /// Where each proxy stands.
    pub fn targets(&self) -> &[TargetState] {
        &self.targets
    }

    /// The version being pushed (0 before the first valid read).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Runs ticks every `interval` until `stop` returns true.
    pub fn run(&mut self, mut report: impl FnMut(Event<'_>), stop: impl Fn() -> bool) {
        while !stop() {
            self.tick(Instant::now(), &mut report);
            std::thread::sleep(self.options.interval);
        }
    }

    /// Reads the source, acts on a settled change, and pushes to the proxies that are due.
    pub fn tick(&mut self, now: Instant, report: &mut impl FnMut(Event<'_>)) {
        self.look(now, report);
        self.push_due(now, report);
    }

    fn look(&mut self, now: Instant, report: &mut impl FnMut(Event<'_>)) {
        let source = match Source::read(&self.path) {
            Ok(source) => source,
            Err(e) => {
                // Mid-rename by an editor, or deleted: try again next tick, report once.
                if self.candidate.is_some() || self.handled.is_some() {
                    report(Event::Unreadable(format!("{}: {e}", self.path.display())));
                }
                self.candidate = None;
                return;
            }
        };
        let hash = hash_of(&source.text);
        if self.handled == Some(hash) {
            self.candidate = None;
            return;
        }
        match self.candidate {
            Some((h, since)) if h == hash => {
                // The first read is acted on at once: there is nothing to debounce against.
                if self.handled.is_some() && now.duration_since(since) < self.options.settle {
                    return;
                }
            }
            _ => {
                self.candidate = Some((hash, now));
                if self.handled.is_some() {
                    return;
                }
            }
        }
        self.candidate = None;
        self.handled = Some(hash);
        match crate::validate(&source.text, self.options.check_files) {
            Err(errors) => report(Event::Invalid {
                errors: errors.iter().map(|e| source.describe(e)).collect(),
            }),
            Ok(_) => {
                self.version += 1;
                self.text = Some(source.text);
                for t in &mut self.targets {
                    t.next_attempt = now;
                    t.backoff = self.options.min_backoff;
                }
                report(Event::NewVersion {
                    version: self.version,
                });
            }
        }
    }

    fn push_due(&mut self, now: Instant, report: &mut impl FnMut(Event<'_>)) {
        let Some(text) = &self.text else { return };
        let version = self.version;
        let due: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let t = &self.targets[i];
                t.acknowledged.is_none_or(|(v, _)| v != version) && t.next_attempt <= now
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let targets: Vec<Target> = due
            .iter()
            .map(|&i| self.targets[i].target.clone())
            .collect();
        let results = push::push_all(&targets, text, &self.options.push);
        for (&i, result) in due.iter().zip(&results) {
            let t = &mut self.targets[i];
            match &result.outcome {
                Outcome::Applied { generation, .. } => {
                    t.acknowledged = Some((version, *generation));
                    t.backoff = self.options.min_backoff;
                }
                _ => {
                    t.next_attempt = Instant::now() + t.backoff;
                    t.backoff = (t.backoff * 2).min(self.options.max_backoff);
                }
            }
        }
        let applied = self
            .targets
            .iter()
            .filter(|t| t.acknowledged.is_some_and(|(v, _)| v == version))
            .count();
        report(Event::Pushed {
            version,
            results: &results,
            applied,
            total: self.targets.len(),
        });
    }
}

fn hash_of(text: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WatchOptions {
        WatchOptions {
            interval: Duration::from_millis(10),
            settle: Duration::from_millis(100),
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            check_files: false,
            push: PushOptions {
                token: None,
                timeout: Duration::from_secs(2),
            },
        }
    }

    const VALID: &str = "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n";

    /// A target that refuses connections.
    fn down() -> Target {
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        Target::parse(&address.to_string()).expect("target")
    }

    #[test]
    fn changes_settle_before_a_push_and_invalid_ones_are_never_pushed() {
        let file = std::env::temp_dir().join(format!("ringmesh-watch-{}.toml", std::process::id()));
        std::fs::write(&file, VALID).expect("write");
        let mut watch = Watch::new(&file, vec![down()], options());
        let log: std::cell::RefCell<Vec<String>> = Default::default();
        let mut report = |e: Event<'_>| {
            log.borrow_mut().push(match e {
                Event::Invalid { errors } => format!("invalid {}", errors.len()),
                Event::Unreadable(_) => "unreadable".into(),
                Event::NewVersion { version } => format!("version {version}"),
                Event::Pushed {
                    version, applied, ..
                } => format!("pushed {version} {applied}"),
            })
        };
        let t0 = Instant::now();
        // The first read is pushed at once.
        watch.tick(t0, &mut report);
        assert_eq!(watch.version(), 1);
        // An invalid change: seen, settled, reported, not a new version.
        std::fs::write(&file, "[[clusters]]\nname = 1\n").expect("write");
        watch.tick(t0 + Duration::from_millis(10), &mut report);
        assert_eq!(watch.version(), 1, "not settled yet");
        watch.tick(t0 + Duration::from_millis(150), &mut report);
        assert_eq!(watch.version(), 1);
        // A valid change becomes version 2 once settled.
        std::fs::write(&file, format!("{VALID}# edited\n")).expect("write");
        watch.tick(t0 + Duration::from_millis(200), &mut report);
        watch.tick(t0 + Duration::from_millis(350), &mut report);
        assert_eq!(watch.version(), 2);
        assert_eq!(
            *log.borrow(),
            [
                "version 1",
                "pushed 1 0",
                "invalid 1",
                "version 2",
                "pushed 2 0"
            ]
        );
        // The proxy is down: it is retried after the backoff, not at every tick.
        log.borrow_mut().clear();
        watch.tick(Instant::now(), &mut report);
        assert!(log.borrow().is_empty(), "{:?}", log.borrow());
        watch.tick(Instant::now() + Duration::from_millis(250), &mut report);
        assert_eq!(*log.borrow(), ["pushed 2 0"]);
        let _ = std::fs::remove_file(&file);
    }
}
