//! gatehouse: a systemd-native front web server.
//!
//! Only `cli` is public: `main.rs` calls it, nothing else uses the library, so every other
//! module is private and `pub(crate)` is the widest visibility inside (the compiler then
//! finds dead code). Which module may use which: the layer diagram in README.md's Layout
//! section, checked by `.ci/module-cycles.py --layers README.md`.
//!
//! Follow a request: `server::listener` accepts; `server::conn` runs hyper;
//! `server::request` decides with the `snapshot`'s `router` and calls `handlers`, then
//! finishes the answer and writes the access log (`log`). Follow a configuration: `config`
//! validates it, `snapshot` builds its runtime objects, `lifecycle` starts them and swaps
//! them on reload. Nothing here speaks systemd's protocols: gatehouse-kit (crates/kit) does,
//! for this binary and for the apps behind it alike.

mod acme;
mod admin;
mod apps;
mod certs;
pub mod cli;
mod config;
mod deploy;
mod handlers;
mod http_base;
mod lifecycle;
mod log;
mod metrics;
mod proxy;
mod request_path;
mod router;
mod sendfile;
mod server;
mod shared;
mod snapshot;
mod static_files;
mod status;
mod tls;
