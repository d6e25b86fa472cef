//! `ringmesh-control`: validate, compare and push configs to a fleet of ringmesh proxies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use control::client::Target;
use control::push::{self, PushOptions};
use control::source::Source;
use control::watch::{Event, Watch, WatchOptions};

/// Drive a fleet of ringmesh proxies from one place.
#[derive(Debug, Parser)]
#[command(name = "ringmesh-control", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config (a file, or a directory of *.toml files read as one): every error with its
    /// file and line; exit 1 if there is one.
    Validate {
        /// Config file or directory.
        path: PathBuf,
        /// Also check that certificate, key, CA and token files it names can be read from here
        /// (the proxy always checks them where it runs).
        #[arg(long)]
        check_files: bool,
    },
    /// Show what changes from OLD to NEW: listeners, virtual hosts, routes, clusters.
    Diff {
        /// The config in force.
        old: PathBuf,
        /// The config to compare with it.
        new: PathBuf,
    },
    /// Validate a config and push it to every proxy at once (PUT /config); print one result per
    /// proxy and exit 1 unless all of them applied it.
    Push {
        /// Config file or directory.
        path: PathBuf,
        #[command(flatten)]
        fleet: Fleet,
    },
    /// Watch a config file or directory; on every valid change, push it to every proxy, retrying
    /// those that fail with backoff, and report which proxy acknowledged which generation.
    Watch {
        /// Config file or directory.
        path: PathBuf,
        #[command(flatten)]
        fleet: Fleet,
        /// How often to look at the config, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// How long a change must stay unchanged before it is pushed, in milliseconds.
        #[arg(long, default_value_t = 300)]
        settle_ms: u64,
        /// Longest wait between retries of a failed proxy, in seconds.
        #[arg(long, default_value_t = 30)]
        max_backoff_s: u64,
    },
}

#[derive(Debug, clap::Args)]
struct Fleet {
    /// Admin API of a proxy: http://HOST:PORT, HOST:PORT or unix:/path. Repeat for each proxy.
    #[arg(long = "to", value_name = "URL", required = true, num_args = 1..)]
    to: Vec<String>,
    /// Bearer token of the admin APIs (default: $RINGMESH_ADMIN_TOKEN).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Timeout of each request to a proxy, in seconds. A proxy answers a push once every worker
    /// runs the new config.
    #[arg(long, default_value_t = 15)]
    timeout_s: u64,
    /// Also check referenced files (certificates...) here before pushing.
    #[arg(long)]
    check_files: bool,
}

impl Fleet {
    fn targets(&self) -> anyhow::Result<Vec<Target>> {
        self.to
            .iter()
            .map(|t| Target::parse(t).map_err(anyhow::Error::msg))
            .collect()
    }

    fn push_options(&self) -> anyhow::Result<PushOptions> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?
                    .trim_end()
                    .to_owned(),
            ),
            (None, None) => std::env::var("RINGMESH_ADMIN_TOKEN").ok(),
        };
        Ok(PushOptions {
            token,
            timeout: Duration::from_secs(self.timeout_s.max(1)),
        })
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringmesh-control: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { path, check_files } => {
            let source = read(&path)?;
            Ok(match control::validate(&source.text, check_files) {
                Ok(config) => {
                    let spec = &config.spec;
                    let routes: usize = spec.virtual_hosts.iter().map(|v| v.routes.len()).sum();
                    println!(
                        "{}: ok ({} listeners, {} virtual hosts, {routes} routes, {} clusters)",
                        path.display(),
                        spec.listeners.len(),
                        spec.virtual_hosts.len(),
                        spec.clusters.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    print_errors(&source, &errors);
                    ExitCode::FAILURE
                }
            })
        }
        Command::Diff { old, new } => {
            let old_config = parsed(&old)?;
            let new_config = parsed(&new)?;
            print!(
                "{}",
                control::diff::diff(&old_config.spec, &new_config.spec)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Push { path, fleet } => {
            let targets = fleet.targets()?;
            let options = fleet.push_options()?;
            let source = read(&path)?;
            if let Err(errors) = control::validate(&source.text, fleet.check_files) {
                print_errors(&source, &errors);
                eprintln!("not pushed: the config is invalid");
                return Ok(ExitCode::FAILURE);
            }
            let results = push::push_all(&targets, &source.text, &options);
            print!("{}", push::render(&results));
            Ok(if results.iter().all(|r| r.outcome.is_applied()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Watch {
            path,
            fleet,
            interval_ms,
            settle_ms,
            max_backoff_s,
        } => {
            let options = WatchOptions {
                interval: Duration::from_millis(interval_ms.max(10)),
                settle: Duration::from_millis(settle_ms),
                min_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(max_backoff_s.max(1)),
                check_files: fleet.check_files,
                push: fleet.push_options()?,
            };
            let mut watch = Watch::new(&path, fleet.targets()?, options);
            println!("watching {} (Ctrl-C to stop)", path.display());
            watch.run(print_event, || false);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Source> {
    Source::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn parsed(path: &Path) -> anyhow::Result<config_schema::Config> {
    let source = read(path)?;
    match config_schema::parse(&source.text) {
        Ok(config) => Ok(config),
        Err(errors) => {
            print_errors(&source, &errors);
            bail!("{} is invalid", path.display())
        }
    }
}

fn print_errors(source: &Source, errors: &[config_schema::ConfigError]) {
    for e in errors {
        eprintln!("{}", source.describe(e));
    }
    eprintln!("{} error(s)", errors.len());
}

fn print_event(event: Event<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    match event {
        Event::Invalid { errors } => {
            println!("[{now}] config changed but is invalid; not pushed:");
            for e in errors {
                println!("  {e}");
            }
        }
        Event::Unreadable(why) => println!("[{now}] cannot read the config: {why}"),
        Event::NewVersion { version } => println!("[{now}] version {version}: pushing"),
        Event::Pushed {
            version,
            results,
            applied,
            total,
        } => {
            for r in results {
                match &r.outcome {
                    push::Outcome::Applied { generation, .. } => println!(
                        "[{now}] version {version}: {} acknowledged generation {generation}",
                        r.target
                    ),
                    other => println!(
                        "[{now}] version {version}: {} not applied ({}); will retry",
                        r.target,
                        describe(other)
                    ),
                }
            }
            println!("[{now}] version {version}: {applied} of {total} proxies acknowledged");
        }
    }
}

fn describe(outcome: &push::Outcome) -> String {
    match outcome {
        push::Outcome::Applied { generation, .. } => format!("generation {generation}"),
        push::Outcome::Rejected(errors) => format!(
            "rejected: {}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        push::Outcome::Failed { status, message } => format!("HTTP {status}: {message}"),
        push::Outcome::Unreachable(why) => format!("unreachable: {why}"),
    }
}
