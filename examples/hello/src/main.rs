//! hello: a small axum app that systemd starts on its first connection, supervised by the
//! watchdog, stopped gracefully, idle-exiting, logging every request to the journal as
//! fields — all of it from gatehouse-kit. Units: `hello.socket`, `hello.service`.
//!
//!     hello [--listen ADDR] [--idle-exit-after DURATION]
//!
//! Under systemd it serves the socket of `hello.socket`; run by hand it listens on
//! `--listen` (default 127.0.0.1:3000).

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use gatehouse_kit::server::Server;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("hello: {e}\nusage: hello [--listen ADDR] [--idle-exit-after DURATION]");
            return ExitCode::from(gatehouse_kit::EXIT_CONFIG);
        }
    };
    let app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .route("/healthz", get(|| async { "ok\n" }));
    Server::new("hello")
        .fallback_listen(&args.listen)
        .health_path("/healthz")
        .idle_exit_after(args.idle_exit_after)
        .run(app)
}

async fn hello() -> String {
    tracing::debug!("saying hello");
    format!("hello from pid {}\n", std::process::id())
}

#[derive(serde::Deserialize)]
struct SlowParams {
    ms: Option<u64>,
}

/// `/slow?ms=3000`: answers after a while, to watch a stop wait for it.
async fn slow(Query(params): Query<SlowParams>) -> String {
    let ms = params.ms.unwrap_or(1000).min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms\n")
}

#[derive(Debug)]
struct Args {
    listen: String,
    idle_exit_after: Duration,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            listen: "127.0.0.1:3000".to_owned(),
            idle_exit_after: Duration::ZERO,
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--listen" => parsed.listen = value()?,
                "--idle-exit-after" => {
                    let text = value()?;
                    parsed.idle_exit_after = humantime::parse_duration(&text)
                        .map_err(|e| format!("--idle-exit-after {text:?}: {e}"))?;
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::Args;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn flags_parse_and_mistakes_are_named() {
        let args = parse(&["--listen", "unix:/run/h.sock", "--idle-exit-after", "2s"]).unwrap();
        assert_eq!(args.listen, "unix:/run/h.sock");
        assert_eq!(args.idle_exit_after, std::time::Duration::from_secs(2));
        assert_eq!(parse(&[]).unwrap().listen, "127.0.0.1:3000");
        assert!(parse(&["--idle-exit-after", "soon"])
            .unwrap_err()
            .contains("soon"));
        assert!(parse(&["--listen"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--port", "1"]).unwrap_err().contains("--port"));
    }
}
