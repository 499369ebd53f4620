//! The command line: `serve`, `check`, and the generators the package build uses.

use crate::config::{self, BindAddr, ConfigOrigin, QuickArgs, Upstream};
use crate::lifecycle::{self, ServeOptions, EXIT_CONFIG};
use crate::log::LogTarget;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const ABOUT: &str = "A systemd-native front web server: socket activation, sd_notify, \
watchdog, zero-downtime reload and idle exit, in one binary.";

const EXAMPLES: &str = "\
gatehouse serve                                  built-in welcome page on 127.0.0.1:8080
gatehouse serve --config /etc/gatehouse/gatehouse.toml
gatehouse serve --listen 127.0.0.1:8080 --root ./public
gatehouse check --config site.toml               validate like `nginx -t`
gatehouse status                                 ask the running server
gatehouse deploy shop v2                         zero-downtime release of shop@v2";

const UNDER_SYSTEMD: &str = "Under systemd, sockets come from the .socket unit (LISTEN_FDS); \
reload with SIGHUP (`systemctl reload gatehouse`), stop with SIGTERM. \
Exit code 78 means a configuration error.";

const AFTER_HELP: &str = concat!(
    "Examples:\n",
    "  gatehouse serve                                  built-in welcome page on 127.0.0.1:8080\n",
    "  gatehouse serve --config /etc/gatehouse/gatehouse.toml\n",
    "  gatehouse serve --listen 127.0.0.1:8080 --root ./public\n",
    "  gatehouse check --config site.toml               validate like `nginx -t`\n",
    "  gatehouse status                                 ask the running server\n",
    "  gatehouse deploy shop v2                         zero-downtime release of shop@v2\n\n",
    "Under systemd, sockets come from the .socket unit (LISTEN_FDS); reload with SIGHUP ",
    "(`systemctl reload gatehouse`), stop with SIGTERM. Exit code 78 means a configuration error."
);

#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about = ABOUT, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,

    /// Log filter, e.g. "info", "debug", "gatehouse=debug,hyper=info" [default: RUST_LOG, then info]
    #[arg(long, global = true, value_name = "FILTER")]
    pub(crate) log_level: Option<String>,

    /// Where logs go: the journal's native protocol or plain lines on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogTarget::Auto)]
    pub(crate) log_target: LogTarget,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Zero-downtime release of a deployable app (`proxy = { app = "APP" }`): start
    /// APP@INSTANCE.socket, health-check it, switch, drain and stop the old instance; exit 1
    /// and change nothing if the new instance fails its check. Deploying the previous
    /// instance is the rollback
    Deploy(DeployArgs),
    /// Write the man page (roff) or a shell completion script to stdout
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file [default: /etc/gatehouse/gatehouse.toml, or the built-in welcome
    /// page when that file does not exist]
    #[arg(short, long, value_name = "PATH", conflicts_with_all = ["listen", "root", "proxy"])]
    pub(crate) config: Option<PathBuf>,

    /// Quick mode: listen on ADDR (IP:PORT or unix:/path); repeatable. Used only when systemd
    /// passed no socket.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    pub(crate) listen: Vec<BindAddr>,

    /// Quick mode: serve the files of DIR at / (index.html, no listing)
    #[arg(long, value_name = "DIR")]
    pub(crate) root: Option<PathBuf>,

    /// Quick mode: proxy PREFIX to UPSTREAM (http://HOST:PORT or unix:/path); repeatable,
    /// a prefix given twice balances over both upstreams
    #[arg(long, value_name = "PREFIX=UPSTREAM", value_parser = config::parse_proxy_arg)]
    pub(crate) proxy: Vec<(String, Upstream)>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Configuration file [default: /etc/gatehouse/gatehouse.toml]
    #[arg(short, long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,

    /// Names of the sockets systemd will pass (FileDescriptorName=), comma-separated: each
    /// must be claimed by a [[listener]], as `serve` requires
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub(crate) fd_names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    /// The server's pid (ExecReload=... --pid $MAINPID)
    #[arg(long)]
    pub(crate) pid: i32,

    /// The configuration file the server uses [default: as `serve`]
    #[arg(short, long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,

    /// How long to wait for the server's outcome
    #[arg(long, default_value = "30s", value_parser = config::parse_duration)]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The app, as named by `proxy = { app = "APP" }`
    pub app: String,
    /// The instance to make live: APP@INSTANCE.socket / .service (a version, or blue/green)
    pub instance: String,

    /// Admin listener: a unix socket path or IP:PORT
    #[arg(long, value_name = "ADDR", default_value = crate::admin::DEFAULT_ADMIN_SOCKET)]
    pub admin: String,

    /// Started when the admin listener does not answer (gatehouse exited when idle)
    #[arg(long, value_name = "UNIT", default_value = "gatehouse.service")]
    pub service: String,

    /// How long the new instance has to start and answer 2xx [default: the route's
    /// deploy_timeout]
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    pub deploy_timeout: Option<std::time::Duration>,

    /// How long to wait for the old instance's requests before stopping it [default: the
    /// route's drain_timeout]
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,

    /// The instance already runs, started by other means: no systemctl, only the health
    /// check, the switch and the drain
    #[arg(long)]
    pub no_systemd: bool,
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
        Command::Check(args) => check(args.config.as_deref(), &args.fd_names),
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
        Command::Deploy(args) => crate::deploy::main(crate::deploy::DeployOptions {
            app: args.app,
            instance: args.instance,
            admin: args.admin,
            service: args.service,
            deploy_timeout: args.deploy_timeout,
            drain_timeout: args.drain_timeout,
            no_systemd: args.no_systemd,
        }),
        Command::Generate { what } => generate(what),
    }
}

fn check(path: Option<&Path>, fd_names: &[String]) -> ExitCode {
    let default = Path::new(config::DEFAULT_CONFIG_PATH);
    let (path, loaded) = match path {
        Some(p) => (p, config::load_file(p)),
        None if !default.exists() => {
            println!(
                "no configuration file at {}: `gatehouse serve` uses the built-in welcome page",
                default.display()
            );
            (default, Ok(config::builtin_config()))
        }
        None => (default, config::load_file(default)),
    };
    let loaded = loaded.and_then(|c| {
        // The same pairing `serve` does with LISTEN_FDNAMES (which would otherwise put it in
        // standby, answering 503).
        let unclaimed: Vec<config::ConfigError> = fd_names
            .iter()
            .filter(|n| crate::server::listener::listener_for_passed(&c, n).is_none())
            .map(|n| {
                config::ConfigError::new(format!(
                    "no [[listener]] is named {n:?}, but systemd passes a socket with that name"
                ))
                .with_hint(format!("add [[listener]] name = {n:?}"))
            })
            .collect();
        if unclaimed.is_empty() {
            Ok(c)
        } else {
            Err(config::ConfigErrors(unclaimed))
        }
    });
    match loaded {
        Ok(config) => {
            for w in crate::tls::warnings(&config, std::time::SystemTime::now()) {
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

/// gatehouse(8): clap_mangen's sections, one COMMANDS section instead of references to
/// per-command pages that do not exist, and the examples kept as preformatted lines.
fn render_man(cmd: clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        writeln!(
            out,
            ".TP\n\\fBgatehouse {}\\fR\n{}",
            sub.get_name(),
            roff(&about)
        )?;
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| format!(" \\fI{v}\\fR"))
                .unwrap_or_default();
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            writeln!(
                out,
                ".RS\n.TP\n\\fB\\-\\-{}\\fR{value}\n{}\n.RE",
                roff(long),
                roff(&help)
            )?;
        }
    }
    writeln!(out, ".SH EXAMPLES\n.nf\n{}\n.fi", roff(EXAMPLES))?;
    writeln!(out, ".SH SYSTEMD\n{}", roff(UNDER_SYSTEMD))?;
    man.render_version_section(out)?;
    Ok(())
}

/// Escapes text for roff: backslashes, hyphens, and a leading dot or quote on a line.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            let escaped = line.replace('\\', "\\e").replace('-', "\\-");
            if escaped.starts_with('.') || escaped.starts_with('\'') {
                format!("\\&{escaped}")
            } else {
                escaped
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn generate(what: Generated) -> ExitCode {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout();
    let result = match what {
        Generated::Man => render_man(cmd, &mut out),
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
