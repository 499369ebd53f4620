//! Where temporary-file work runs: on the connection's thread, as nginx does it, until the
//! disk proves slow; then on tokio's blocking pool for a while.
//!
//! Writing to the page cache, or reading back what was just written, costs about a memcpy;
//! each hop to the blocking pool cost futex calls on two threads (bench/proxy.sh, POST 1 MiB
//! to disk: ~180 futex calls per request, 0.43× nginx's rate). But a disk that stalls would
//! stall every connection of the thread. So:
//! - an operation that kept its thread asleep (off the CPU, not preempted) for more than
//!   `SLOW` sends later file work to the pool for `OFFLOAD_FOR`;
//! - so does an operation still running after `SLOW`, at once: the other threads do not
//!   walk into the same hang (the one inside it waits, as it would reading a static file
//!   from that disk);
//! - work on the pool is timed too, and keeps file work there while the disk stays slow.
//!
//! A panic in the work is caught on either path and reported as [`Panicked`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Slower than this, a temporary-file operation means the disk is stalling.
const SLOW: Duration = Duration::from_millis(20);
/// Off the CPU this long, an operation counts as slow even if it was also preempted.
const SURELY_SLOW: Duration = Duration::from_millis(250);
/// How long file work then stays on the blocking pool.
const OFFLOAD_FOR: Duration = Duration::from_secs(60);

/// Threads that run file work inline get a slot each (the same in every `Policy`), given
/// back when the thread ends; threads beyond the slots use the pool.
const SLOTS: usize = 64;
static SLOT_USED: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
/// 1 + the highest slot ever taken: how far `offloaded` looks.
static SLOTS_HIGH: AtomicUsize = AtomicUsize::new(0);

struct SlotGuard(Option<usize>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            SLOT_USED[i].store(false, Ordering::Release);
        }
    }
}

thread_local! {
    static SLOT: SlotGuard = SlotGuard(take_slot());
}

fn take_slot() -> Option<usize> {
    let i = SLOT_USED.iter().position(|used| {
        used.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })?;
    SLOTS_HIGH.fetch_max(i + 1, Ordering::Relaxed);
    Some(i)
}

/// This thread's slot; `None` when all are taken (or the thread is ending).
fn my_slot() -> Option<usize> {
    SLOT.try_with(|slot| slot.0).ok().flatten()
}

/// The process's policy (tests make their own, so that others' file work cannot disturb
/// them).
static POLICY: Policy = Policy::new();

struct Policy {
    /// Until when (milliseconds after `clock_base`) file work runs on the blocking pool.
    offloaded_until_ms: AtomicU64,
    /// Per thread slot: 0 when idle, else 1 + the start (in ms) of its inline operation.
    running_since: [AtomicU64; SLOTS],
}

/// File work that panicked.
#[derive(Debug)]
pub(crate) struct Panicked;

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("temporary-file work panicked")
    }
}

impl std::error::Error for Panicked {}

/// File work under way: done inline already, or on the blocking pool.
pub(crate) enum Started<T> {
    Done(Option<Result<T, Panicked>>),
    Pooled(JoinHandle<T>),
}

impl<T> Started<T> {
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Panicked>> {
        match self {
            Started::Done(result) => Poll::Ready(result.take().unwrap_or(Err(Panicked))),
            Started::Pooled(handle) => {
                Poll::Ready(ready!(Pin::new(handle).poll(cx)).map_err(|_| Panicked))
            }
        }
    }
}

/// Starts `work` where it should run (see the module's comment).
pub(crate) fn start<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Started<T> {
    POLICY.start(work)
}

/// Runs `work` where it should run, to its end.
pub(crate) async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Panicked> {
    POLICY.run(work).await
}

impl Policy {
    const fn new() -> Policy {
        Policy {
            offloaded_until_ms: AtomicU64::new(0),
            running_since: [const { AtomicU64::new(0) }; SLOTS],
        }
    }

    fn start<T: Send + 'static>(
        &'static self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Started<T> {
        match my_slot() {
            Some(slot) if !self.offloaded() => Started::Done(Some(self.inline(slot, work))),
            _ => Started::Pooled(tokio::task::spawn_blocking(move || {
                let begun = Instant::now();
                let result = work();
                let took = begun.elapsed();
                if took > SLOW {
                    self.offload(took, "on the blocking pool");
                }
                result
            })),
        }
    }

    async fn run<T: Send + 'static>(
        &'static self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Panicked> {
        let mut started = self.start(work);
        std::future::poll_fn(|cx| started.poll(cx)).await
    }

    fn inline<T>(&self, slot: usize, work: impl FnOnce() -> T) -> Result<T, Panicked> {
        let before = ThreadTimes::now();
        self.running_since[slot].store(now_ms() + 1, Ordering::Relaxed);
        let result = std::panic::catch_unwind(AssertUnwindSafe(work));
        self.running_since[slot].store(0, Ordering::Relaxed);
        let after = ThreadTimes::now();
        let off_cpu = after
            .wall
            .saturating_sub(before.wall + (after.cpu.saturating_sub(before.cpu)));
        let asleep_only =
            after.involuntary == before.involuntary && after.voluntary > before.voluntary;
        if (off_cpu > SLOW && asleep_only) || off_cpu > SURELY_SLOW {
            self.offload(off_cpu, "asleep");
        }
        result.map_err(|_| Panicked)
    }

    fn offload(&self, took: Duration, how: &str) {
        let now = now_ms();
        let until = now.saturating_add(OFFLOAD_FOR.as_millis() as u64);
        if self.offloaded_until_ms.swap(until, Ordering::Relaxed) <= now {
            tracing::warn!(
                "a temporary-file operation took {} ms ({how}): file work moves off the connection threads for {} s",
                took.as_millis(),
                OFFLOAD_FOR.as_secs()
            );
        }
    }

    /// Whether file work goes to the pool now: the disk was slow lately, or an inline
    /// operation has been running for longer than `SLOW`.
    fn offloaded(&self) -> bool {
        let now = now_ms();
        if now < self.offloaded_until_ms.load(Ordering::Relaxed) {
            return true;
        }
        let taken = SLOTS_HIGH.load(Ordering::Relaxed).min(SLOTS);
        let stuck = self.running_since[..taken].iter().find_map(|since| {
            let since = since.load(Ordering::Relaxed).checked_sub(1)?;
            Some(Duration::from_millis(now.saturating_sub(since))).filter(|d| *d > SLOW)
        });
        match stuck {
            Some(running) => {
                self.offload(running, "still running");
                true
            }
            None => false,
        }
    }
}

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(clock_base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// This thread's clocks, from one getrusage(RUSAGE_THREAD).
struct ThreadTimes {
    wall: Duration,
    cpu: Duration,
    /// Times it gave up the CPU to wait (for a disk, a lock, …).
    voluntary: i64,
    /// Times it was preempted.
    involuntary: i64,
}

impl ThreadTimes {
    fn now() -> ThreadTimes {
        let wall = clock_base().elapsed();
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage fills the struct it is given; RUSAGE_THREAD is valid on Linux.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
        if rc != 0 {
            // Counted as all CPU: never a reason to move file work.
            return ThreadTimes {
                wall,
                cpu: wall,
                voluntary: 0,
                involuntary: 0,
            };
        }
        // SAFETY: filled by the successful call above.
        let u = unsafe { usage.assume_init() };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        ThreadTimes {
            wall,
            cpu: tv(u.ru_utime) + tv(u.ru_stime),
            voluntary: u.ru_nvcsw,
            involuntary: u.ru_nivcsw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_work_leaves_the_thread_when_the_disk_sleeps_not_when_the_cpu_is_busy() {
        // A policy of its own: other tests' file work cannot move this one's.
        let policy: &'static Policy = Box::leak(Box::new(Policy::new()));
        let reset = || policy.offloaded_until_ms.store(0, Ordering::Relaxed);
        // Busy on the CPU for longer than SLOW: not the disk's fault.
        let spin = policy.start(|| {
            let until = Instant::now() + SLOW * 2;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            1
        });
        assert!(matches!(spin, Started::Done(_)), "inline at first");
        assert!(!policy.offloaded(), "CPU work moved file work to the pool");
        // A panic is an error, on the inline path too. (Printing its backtrace may itself
        // be slow enough to move file work: not what is tested here.)
        assert!(policy.run(|| -> u8 { panic!("boom") }).await.is_err());
        reset();
        // Asleep for longer than SLOW: the disk.
        let sleep = policy
            .run(|| std::thread::sleep(SLOW + Duration::from_millis(10)))
            .await;
        assert!(sleep.is_ok());
        assert!(
            policy.offloaded(),
            "a sleeping operation did not move file work"
        );
        assert!(matches!(policy.start(|| 2), Started::Pooled(_)));
        assert!(
            policy.run(|| -> u8 { panic!("boom") }).await.is_err(),
            "a panic on the pool"
        );
        reset();
        // Still running after SLOW: others go to the pool at once, before it ends.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let hung = std::thread::spawn(move || policy.inline(my_slot().unwrap(), || rx.recv()));
        std::thread::sleep(SLOW * 3);
        assert!(
            policy.offloaded(),
            "a hung operation left the others inline"
        );
        tx.send(()).unwrap();
        hung.join().unwrap().unwrap().unwrap();
    }
}
