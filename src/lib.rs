//! gatehouse: a systemd-native front web server.
//!
//! Follow a request: `lifecycle` starts everything and owns signals; `server::listener`
//! accepts; `server::conn` runs hyper; `server::request` finds the route via `router` and
//! calls `handlers`; `log` writes the access log. Only `systemd` speaks systemd's protocols.

pub mod acme;
pub mod admin;
pub mod certs;
pub mod cli;
pub mod config;
pub mod connections;
pub mod handlers;
pub mod http_base;
pub mod lifecycle;
pub mod liveness;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod request_path;
pub mod router;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod static_files;
pub mod status;
pub mod systemd;
pub mod tls;
