//! hastctl: the control tool of hast. See `docs/hastctl.8.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hast::ctl;
use hast::ctl::daemon::Format;
use hast_core::config::DEFAULT_CONFIG;
use hast_core::metadata::Role;
use hast_core::sysexits;
use hast_core::units::parse_size;

#[derive(Debug, Parser)]
#[command(
    name = "hastctl",
    version,
    about = "Control utility of hast (Highly Available Storage)"
)]
struct Cli {
    /// Print debugging information (repeat for more).
    #[arg(short = 'd', action = clap::ArgAction::Count, global = true)]
    debug: u8,
    /// Configuration file.
    #[arg(short = 'c', value_name = "config", global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Node name matched against `on NAME` blocks (default: this host's names; env HAST_NODE).
    #[arg(long = "node", value_name = "NAME", global = true, env = "HAST_NODE")]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Initialise the metadata of local components (works without hastd).
    Create {
        /// Extent size (k/M/G suffixes accepted), a power of two; default 2M.
        #[arg(short = 'e', value_parser = parse_size)]
        extentsize: Option<u64>,
        /// Number of hot extents kept dirty; default 64.
        #[arg(short = 'k', value_parser = parse_size)]
        keepdirty: Option<u64>,
        /// Media size to use instead of the provider's size.
        #[arg(short = 'm', value_parser = parse_size)]
        mediasize: Option<u64>,
        /// Resources to create.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Change the role of resources.
    Role {
        /// Become primary even though this node's copy is known to be inconsistent (an
        /// unfinished sync towards it, or a failed write): serve it as it is.
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// init, primary or secondary.
        #[arg(value_parser = parse_role)]
        role: Role,
        /// Resources (`all` for every one).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print every detail of resources.
    List {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Resources (`all` or nothing: every one).
        names: Vec<String>,
    },
    /// Print one line per resource.
    Status {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Resources (`all` or nothing: every one).
        names: Vec<String>,
    },
    /// Print the on-disk metadata of local components (works without hastd).
    Dump {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// Resources (`all` or nothing: every one).
        names: Vec<String>,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "init" => Ok(Role::Init),
        "primary" => Ok(Role::Primary),
        "secondary" => Ok(Role::Secondary),
        _ => Err(format!(
            "unknown role '{text}' (expected init, primary or secondary)"
        )),
    }
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
    let level = match cli.debug {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "hast={level},hastctl={level}"
        )))
        .with_writer(std::io::stderr)
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .try_init();
    let config = match hast::conf::load(&cli.config, cli.node.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(err.exit_code());
        }
    };
    let code = match &cli.command {
        Command::Create {
            extentsize,
            keepdirty,
            mediasize,
            names,
        } => {
            let opts = ctl::create::CreateOptions {
                extentsize: *extentsize,
                keepdirty: *keepdirty,
                mediasize: *mediasize,
            };
            ctl::create::run(&config, names, &opts)
        }
        Command::Dump { json, names } => ctl::dump::run(&config, names, *json),
        Command::Role { role, names, force } => ctl::daemon::role(&config, *role, names, *force),
        Command::List { json, names } => {
            let format = if *json { Format::Json } else { Format::Verbose };
            ctl::daemon::status(&config, names, format)
        }
        Command::Status { json, names } => {
            let format = if *json { Format::Json } else { Format::Terse };
            ctl::daemon::status(&config, names, format)
        }
    };
    ExitCode::from(code)
}
