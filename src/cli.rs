//! The command line: `serve`, `check`, and the generators the package build uses.

use crate::config::{self, BindAddr, ConfigOrigin, QuickArgs, Upstream};
use crate::lifecycle::{self, ServeOptions, EXIT_CONFIG};
use crate::log::LogTarget;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const ABOUT: &str = "A systemd-native front web server: socket activation, sd_notify, \
watchdog, zero-downtime reload and idle exit, in one binary.";

const AFTER_HELP: &str = "\
Examples:
  gatehouse serve                                  built-in welcome page on 127.0.0.1:8080
  gatehouse serve --config /etc/gatehouse/gatehouse.toml
  gatehouse serve --listen 127.0.0.1:8080 --listen unix:/run/gh.sock
  gatehouse check --config site.toml               validate like `nginx -t`

Under systemd, sockets come from the .socket unit (LISTEN_FDS); reload with SIGHUP
(`systemctl reload gatehouse`), stop with SIGTERM. Exit code 78 means a configuration error.";

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Where logs go: the journal's native protocol or plain lines on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogTarget::Auto)]
    pub log_target: LogTarget,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (sockets from systemd, or bound from the configuration)
    Serve(ServeArgs),
    /// Validate the configuration, print every error with file:line:column; exit 78 if invalid
    Check(CheckArgs),
    /// Reload a running server synchronously (for ExecReload=): validate the configuration,
    /// send SIGHUP, wait for the outcome; exit 78 if the configuration is refused
    Reload(ReloadArgs),
    /// Print a summary of a running server, asked over its admin listener; exit 69 if
    /// unreachable
    Status {
        /// Admin listener: a unix socket path or IP:PORT
        #[arg(long, value_name = "ADDR", default_value = crate::admin::DEFAULT_ADMIN_SOCKET)]
        admin: String,
    },
    /// Write the man page (roff) or a shell completion script to stdout
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file [default: /etc/gatehouse/gatehouse.toml, or the built-in welcome
    /// page when that file does not exist]
    #[arg(short, long, value_name = "PATH", conflicts_with_all = ["listen", "root", "proxy"])]
    pub config: Option<PathBuf>,

    /// Quick mode: listen on ADDR (IP:PORT or unix:/path); repeatable. Used only when systemd
    /// passed no socket.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    pub listen: Vec<BindAddr>,

    /// Quick mode: serve the files of DIR (static file serving lands in a later version)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Quick mode: proxy PREFIX to UPSTREAM (http://HOST:PORT or unix:/path); repeatable
    /// (reverse proxying lands in a later version)
    #[arg(long, value_name = "PREFIX=UPSTREAM", value_parser = config::parse_proxy_arg)]
    pub proxy: Vec<(String, Upstream)>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file [default: /etc/gatehouse/gatehouse.toml]
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The server's pid (ExecReload=... --pid $MAINPID)
    #[arg(long)]
    pub pid: i32,

    /// The configuration file the server uses [default: as `serve`]
    #[arg(short, long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// How long to wait for the server's outcome
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub timeout: std::time::Duration,
}

fn parse_bind(s: &str) -> Result<BindAddr, String> {
    s.parse()
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let quick = QuickArgs {
                listen: args.listen,
                root: args.root,
                proxy: args.proxy,
            };
            let origin = match (args.config, quick.is_empty()) {
                (Some(path), _) => ConfigOrigin::File(path),
                (None, true) => ConfigOrigin::Default,
                (None, false) => ConfigOrigin::Quick(quick),
            };
            lifecycle::run(ServeOptions {
                origin,
                log_level: cli.log_level,
                log_target: cli.log_target,
            })
        }
        Command::Check(args) => check(args.config.as_deref()),
        Command::Reload(args) => {
            let origin = args
                .config
                .map_or(ConfigOrigin::Default, ConfigOrigin::File);
            lifecycle::reload_status::request_reload(args.pid, &origin, args.timeout)
        }
        Command::Status { admin } => match crate::admin::query_status(&admin) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gatehouse status: {e}");
                // EX_UNAVAILABLE
                ExitCode::from(69)
            }
        },
        Command::Generate { what } => generate(what),
    }
}

fn check(path: Option<&Path>) -> ExitCode {
    let default = Path::new(config::DEFAULT_CONFIG_PATH);
    let path = match path {
        Some(p) => p,
        None if !default.exists() => {
            println!(
                "no configuration file at {}: `gatehouse serve` uses the built-in welcome page",
                default.display()
            );
            println!("configuration OK");
            return ExitCode::SUCCESS;
        }
        None => default,
    };
    match config::load_file(path) {
        Ok(config) => {
            for w in crate::tls::expiry_warnings(&config, std::time::SystemTime::now()) {
                eprintln!("warning: {w}");
            }
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.0.len();
            eprintln!(
                "configuration invalid: {n} error{} in {}",
                if n == 1 { "" } else { "s" },
                path.display()
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn generate(what: Generated) -> ExitCode {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    let result = match what {
        Generated::Man => clap_mangen::Man::new(cmd).render(&mut out),
        Generated::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "gatehouse", &mut out);
            Ok(())
        }
        Generated::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "gatehouse", &mut out);
            Ok(())
        }
        Generated::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "gatehouse", &mut out);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::FAILURE
        }
    }
}
