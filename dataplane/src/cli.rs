//! The `ringmesh` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use config_schema::IoMode;
use tracing_subscriber::EnvFilter;

use crate::server::{self, RunOptions};

/// ringmesh: a per-node service-mesh proxy (thread-per-core, io_uring).
#[derive(Debug, Parser)]
#[command(name = "ringmesh", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Worker threads, one per core (default: one per available core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// I/O driver: auto tries io_uring and falls back to epoll.
    #[arg(long, value_enum)]
    io: Option<Io>,
    /// Write the admin API's bound address to FILE (useful with port 0).
    #[arg(long, value_name = "FILE")]
    admin_address_path: Option<PathBuf>,
    /// Reload the config when the file changes (polled; a change is applied once it settles).
    #[arg(long)]
    watch: bool,
    /// Serve the binary-upgrade socket at PATH (overrides `[runtime] upgrade_socket`).
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Binary upgrade: take the listening sockets over from the ringmesh serving the upgrade
    /// socket at PATH; once this process serves, the old one stops accepting, drains and exits.
    #[arg(long, value_name = "PATH")]
    upgrade_from: Option<PathBuf>,
    /// Log filter (`info`, `debug`, `ringmesh=debug`...); RUST_LOG works too.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file: print every error with its line, exit non-zero if there is one.
    Validate {
        /// Config file.
        file: PathBuf,
        /// Also check that the certificate, key, CA and token files it names can be read here
        /// (a running proxy always checks them when it loads a config).
        #[arg(long)]
        check_files: bool,
    },
    /// Print the JSON Schema of the config format.
    Schema,
    /// Node mode.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Print the capture rules (nftables table `inet ringmesh` and policy routing) for a
    /// config's `[node]`; with --apply install them in this network namespace, with --remove take
    /// them out.
    Rules {
        /// Config file.
        file: PathBuf,
        /// Install the rules here, replacing older ringmesh rules (running it twice is harmless).
        #[arg(long, conflicts_with = "remove")]
        apply: bool,
        /// Remove ringmesh's rules from this network namespace (no error when there are none).
        #[arg(long)]
        remove: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Io {
    Auto,
    Uring,
    Epoll,
}

impl From<Io> for IoMode {
    fn from(io: Io) -> Self {
        match io {
            Io::Auto => IoMode::Auto,
            Io::Uring => IoMode::Uring,
            Io::Epoll => IoMode::Epoll,
        }
    }
}

/// Entry point of the `ringmesh` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate { file, check_files }) => validate(&file, check_files),
        Some(Command::Schema) => {
            print!("{}", config_schema::json_schema());
            ExitCode::SUCCESS
        }
        Some(Command::Node {
            command:
                NodeCommand::Rules {
                    file,
                    apply,
                    remove,
                },
        }) => node_rules(&file, apply, remove),
        None => {
            init_logging(&cli.log_level);
            let Some(config_path) = cli.config else {
                eprintln!("ringmesh: --config FILE is required (see --help)");
                return ExitCode::from(2);
            };
            let options = RunOptions {
                config_path,
                workers: cli.workers,
                io: cli.io.map(IoMode::from),
                admin_address_file: cli.admin_address_path,
                watch: cli.watch,
                upgrade_socket: cli.upgrade_socket,
                upgrade_from: cli.upgrade_from,
            };
            match server::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn validate(file: &std::path::Path, check_files: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match control::validate(&text, check_files) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{}:{e}", file.display());
            }
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

/// `ringmesh node rules`: `--remove` needs no valid config (it takes out whatever ringmesh
/// installed), so a broken config never stands in the way of cleaning up.
fn node_rules(file: &std::path::Path, apply: bool, remove: bool) -> ExitCode {
    use crate::capture::rules::{self, Rules};
    if remove {
        return match Rules::remove() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmesh node rules --remove: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let config = match config_schema::parse(&text) {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}:{e}", file.display());
            }
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            return ExitCode::FAILURE;
        }
    };
    let rules = match rules::build(&config.spec) {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    if !apply {
        print!("{}", rules.text());
        return ExitCode::SUCCESS;
    }
    match rules.apply() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmesh node rules --apply: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
