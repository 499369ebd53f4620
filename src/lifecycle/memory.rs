//! Hands memory freed after a burst of traffic back to the kernel once the server is idle.
//!
//! glibc keeps freed heap memory mapped for reuse: after 50 proxied connections closed,
//! ≈ 4 MiB of free chunks stayed resident indefinitely. `malloc_trim` returns the free pages
//! of every arena. It is tried at most once a second, only while no connection is open and
//! the allocator holds notably more free memory than after the last trim (idle upstream
//! connections are closed a while after the clients left), so busy servers never pay for it.

use crate::shared::Shared;
use std::sync::Arc;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(1);
/// Free memory beyond what the last trim left that is worth a trim.
const WORTH: usize = 256 * 1024;

pub(crate) async fn trim_when_idle(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the last trim could not release (free chunks between live ones).
    let mut left = 0;
    loop {
        tick.tick().await;
        if shared.conns.open() == 0 && free_bytes() > left + WORTH {
            trim();
            left = free_bytes();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.fordblks
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_bytes() -> usize {
    0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
