//! hastd: the hast daemon. See `docs/hastd.8.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hast_core::config::DEFAULT_CONFIG;
use hast_core::sysexits;

#[derive(Debug, Parser)]
#[command(name = "hastd", version, about = "Highly Available Storage daemon")]
struct Cli {
    /// Print debugging information (repeat for more).
    #[arg(short = 'd', action = clap::ArgAction::Count)]
    debug: u8,
    /// Stay in the foreground and log to stderr.
    #[arg(short = 'F')]
    foreground: bool,
    /// Configuration file.
    #[arg(short = 'c', value_name = "config", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Pidfile (overrides the config's `pidfile`).
    #[arg(short = 'P', value_name = "pidfile")]
    pidfile: Option<PathBuf>,
    /// Node name matched against `on NAME` blocks (default: this host's names; env HAST_NODE).
    #[arg(long = "node", value_name = "NAME", env = "HAST_NODE")]
    node: Option<String>,
    /// Check the configuration for this node and exit: 0 if valid, 78 otherwise.
    #[arg(short = 't')]
    test: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => sysexits::EX_USAGE,
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    if cli.test {
        return match hast::conf::load(&cli.config, cli.node.as_deref()) {
            Ok(config) => {
                let n = config.resources.len();
                println!("{}: configuration OK ({n} resources)", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::from(err.exit_code())
            }
        };
    }
    ExitCode::from(hast::daemon::run(hast::daemon::Options {
        config: cli.config,
        pidfile: cli.pidfile,
        foreground: cli.foreground,
        debug: cli.debug,
        node: cli.node,
    }))
}
