//! The serving side: listeners and their accept loops, one hyper connection per client, and
//! the per-request pipeline (host → route → handler → access log). Connection accounting is
//! `gatehouse_kit::connections`; the configuration generation it serves, `crate::snapshot`.
//!
//! A request's path: `listener::accept_loop` → `conn::serve` → `request::handle` →
//! `router::Router::route` → `handlers::dispatch` → `respond`, `static_files::serve` or
//! `proxy::handle`.

pub(crate) mod conn;
mod fin_merge;
pub(crate) mod listener;
mod read_ahead;
pub(crate) mod request;
mod watch;

/// Sizes that comments in this module rely on: a refactor that makes these futures larger
/// costs memory per connection (hyper keeps the request future inline in every connection,
/// idle or not; tokio moves a spawned future by value).
#[cfg(test)]
mod future_sizes {
    use super::{conn, listener, request, watch};
    use crate::log::Remote;
    use crate::shared::Shared;
    use gatehouse_kit::connections::ConnGuard;
    use std::sync::Arc;

    /// `size_of` what `f` returns, without a value to call it with.
    fn returned_size<A, R>(_: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn request_and_connection_futures_stay_small() {
        let handle =
            returned_size(|(req, ctx): (_, &request::ConnContext)| request::handle(req, ctx));
        let stream =
            returned_size(|(req, ctx): (_, &request::ConnContext)| watch::serve_stream(req, ctx));
        let serve = returned_size(
            |(shared, stream, remote, name, guard): (
                Arc<Shared>,
                listener::Stream,
                Remote,
                Arc<str>,
                ConnGuard,
            )| conn::serve(shared, stream, remote, name, guard),
        );
        eprintln!(
            "request::handle {handle} B, watch::serve_stream {stream} B, conn::serve {serve} B"
        );
        // Measured at 3872, 4176 and 1912 bytes (debug build; release within 50 bytes).
        // The connection future holds the plaintext path inline and the TLS path boxed
        // (`conn::serve`): unboxed, a TLS session's kilobytes would land in every connection.
        assert!(serve <= 2304, "conn::serve's future is {serve} bytes");
        // proxy::handle rewrites the head before its async part, so the request, its parts
        // and header map keep no slot in the future hyper reserves per connection.
        assert!(handle <= 4608, "request::handle's future is {handle} bytes");
        assert!(
            stream <= 4864,
            "watch::serve_stream's future is {stream} bytes"
        );
    }
}
