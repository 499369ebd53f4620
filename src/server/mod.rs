//! The serving side: listeners and their accept loops, one hyper connection per client, and
//! the per-request pipeline (host → route → handler → access log). Connection accounting is
//! `crate::connections`; the configuration generation it serves, `crate::snapshot`.
//!
//! A request's path: `listener::accept_loop` → `conn::serve` → `request::handle` →
//! `router::Router::route` → `handlers::dispatch` → `respond`, `static_files::serve` or
//! `proxy::handle`.

pub mod conn;
mod fin_merge;
pub mod listener;
mod read_ahead;
pub mod request;
mod watch;
