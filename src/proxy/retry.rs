//! `forward`'s retry policy: which upstream next, when to pause between rounds, and whether
//! a failed attempt may be tried again.

use super::balance::Pool;
use http::StatusCode;
use std::time::Duration;
use tokio::time::Instant;

/// Re-sends of one idempotent request whose connection died before any response byte.
const MAX_RESENDS: u32 = 8;

/// The retry bookkeeping of one forwarded request: the upstreams tried this round, the
/// pause between rounds, the re-sends spent, and what to answer when it gives up.
pub(super) struct Attempts {
    tried: smallvec::SmallVec<[usize; 4]>,
    /// Rounds go on until then (`retry_connect_for` after the request was ready).
    deadline: Instant,
    backoff: Duration,
    resends: u32,
    /// What to answer if every attempt fails: status, and the upstream tried last.
    pub(super) failure: (StatusCode, Option<usize>),
}

/// The next step of `forward`'s loop.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pick {
    Upstream(usize),
    /// Every upstream failed this round: pause, then start the next.
    Wait(Duration),
    GiveUp,
}

/// How an attempt failed, as far as retrying it goes.
pub(super) enum Failure {
    /// No connection: nothing reached the upstream.
    Connect { timed_out: bool },
    /// Sent, but the connection died before a response head.
    BeforeResponse { idempotent: bool },
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Retry,
    GiveUp,
}

impl Attempts {
    pub(super) fn new(deadline: Instant) -> Attempts {
        Attempts {
            tried: smallvec::SmallVec::new(),
            deadline,
            backoff: Duration::from_millis(20),
            resends: 0,
            failure: (StatusCode::BAD_GATEWAY, None),
        }
    }

    /// An upstream not tried this round; when none is left, back off and go again until
    /// `retry_connect_for` is used up (an app restarting, a socket coming back).
    pub(super) fn pick(&mut self, pool: &Pool) -> Pick {
        if let Some(i) = pool.pick(&self.tried) {
            self.tried.push(i);
            return Pick::Upstream(i);
        }
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Pick::GiveUp;
        }
        let pause = self.backoff.min(remaining);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(500));
        self.tried.clear();
        Pick::Wait(pause)
    }

    /// The request goes to another pool (an app switched instances): none of its upstreams
    /// was tried yet.
    pub(super) fn new_pool(&mut self) {
        self.tried.clear();
    }

    /// What next after upstream `idx` failed; `body_back`: the request body can still be
    /// sent (buffered, empty, or never read).
    pub(super) fn after(&mut self, idx: usize, failure: Failure, body_back: bool) -> Next {
        match failure {
            Failure::Connect { timed_out } => {
                let status = if timed_out {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                self.failure = (status, Some(idx));
                // Nothing was sent: the next upstream of this round gets it.
                if body_back {
                    Next::Retry
                } else {
                    Next::GiveUp
                }
            }
            // Sent again only when the method is idempotent (RFC 9110 §9.2.2) and the body
            // can be replayed. More than once: an app that exits gracefully closes all its
            // idle keep-alive connections at the same moment, and the re-send may pick
            // another of those from the pool; each fails at once, so a few more tries cost
            // nothing (nginx's proxy_next_upstream does the same for idempotent requests).
            Failure::BeforeResponse { idempotent } => {
                self.failure = (StatusCode::BAD_GATEWAY, Some(idx));
                if self.resends < MAX_RESENDS && body_back && idempotent {
                    self.resends += 1;
                    self.tried.clear();
                    Next::Retry
                } else {
                    Next::GiveUp
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts() -> Attempts {
        Attempts::new(Instant::now() + Duration::from_secs(10))
    }

    #[test]
    fn a_failed_connect_moves_on_while_the_body_can_be_sent_again() {
        let mut a = attempts();
        assert_eq!(
            a.after(0, Failure::Connect { timed_out: false }, true),
            Next::Retry
        );
        assert_eq!(a.failure, (StatusCode::BAD_GATEWAY, Some(0)));
        assert_eq!(
            a.after(1, Failure::Connect { timed_out: true }, false),
            Next::GiveUp
        );
        assert_eq!(a.failure, (StatusCode::GATEWAY_TIMEOUT, Some(1)));
    }

    #[test]
    fn only_idempotent_replayable_requests_are_resent_and_at_most_max_resends_times() {
        let before = |idempotent| Failure::BeforeResponse { idempotent };
        let mut a = attempts();
        assert_eq!(a.after(0, before(false), true), Next::GiveUp);
        assert_eq!(a.after(0, before(true), false), Next::GiveUp);
        for _ in 0..MAX_RESENDS {
            assert_eq!(a.after(0, before(true), true), Next::Retry);
        }
        assert_eq!(a.after(0, before(true), true), Next::GiveUp);
        assert_eq!(a.failure, (StatusCode::BAD_GATEWAY, Some(0)));
    }

    #[test]
    fn rounds_pause_with_doubling_backoff_until_the_deadline() {
        let upstream = "http://127.0.0.1:9".parse().unwrap();
        let pool = Pool::new(&crate::config::proxy::ProxyConfig::new(vec![upstream]));
        let mut a = attempts();
        for pause in [20, 40, 80, 160, 320, 500, 500] {
            assert_eq!(a.pick(&pool), Pick::Upstream(0));
            assert_eq!(a.pick(&pool), Pick::Wait(Duration::from_millis(pause)));
        }
        // The last pause ends at the deadline, not past it.
        a.deadline = Instant::now() + Duration::from_millis(300);
        assert_eq!(a.pick(&pool), Pick::Upstream(0));
        match a.pick(&pool) {
            Pick::Wait(pause) => assert!(pause <= Duration::from_millis(300), "{pause:?}"),
            other => panic!("{other:?}"),
        }
        a.deadline = Instant::now();
        assert_eq!(a.pick(&pool), Pick::Upstream(0));
        assert_eq!(a.pick(&pool), Pick::GiveUp);
    }
}
