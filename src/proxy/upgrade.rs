//! Upgraded connections (WebSocket): once the upstream answers 101, both sides are switched
//! to raw byte streams and copied both ways until either closes or `idle_timeout` passes
//! with no byte in either direction. The tunnel holds the client connection's `ConnGuard`,
//! so it counts as an open connection like any other.

use super::balance::InFlight;
use super::body::Activity;
use gatehouse_kit::connections::ConnGuard;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) fn spawn_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    label: String,
    in_flight: InFlight,
    connection: Option<ConnGuard>,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        // Counted as an open connection until the tunnel closes: idle exit waits for it, a
        // drain gives it shutdown_timeout, max_connections bounds it.
        let _connection = connection;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(upstream = %label, error = %e, "upgrade failed");
                return;
            }
        };
        let (cr, cw) = tokio::io::split(TokioIo::new(client));
        let (ur, uw) = tokio::io::split(TokioIo::new(upstream));
        let activity = Activity::tracked();
        // Either direction ending (close, error, or silence both ways) ends the tunnel;
        // WebSocket closes are full closes, so half-open tunnels need not be kept.
        tokio::select! {
            _ = pump(cr, uw, idle, &activity) => {}
            _ = pump(ur, cw, idle, &activity) => {}
        }
        tracing::debug!(upstream = %label, "upgraded connection closed");
    });
}

/// Copies one direction. A read that waits `idle` ends the tunnel only if the other
/// direction was silent too (`activity` is shared).
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    idle: Duration,
    activity: &Activity,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(idle, from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                activity.touch();
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Err(_) if activity.idle() >= idle => break,
            Err(_) => {}
        }
    }
    let _ = to.shutdown().await;
}
