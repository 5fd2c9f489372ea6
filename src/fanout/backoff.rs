//! When a fan-out session connects a node again: the back-off of one node connection
//! and what the session's reconcile does with it, as plain decisions on time and
//! state (the session applies them; the unit tests below pin them down).

use std::time::Duration;
use tokio::time::Instant;

/// First pause before a node that failed or refused is tried again (doubling to 30 s).
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(30);
/// A node connection up this long before it ends is retried after [`RETRY_FIRST`]
/// again; one that ends sooner (e.g. taken over by another connection with the
/// client id: a silent close on MQTT 3.x) doubles the pause.
pub(super) const STABLE: Duration = Duration::from_secs(10);

/// A node connection's state, as the session sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkState {
    Idle { retry_at: Instant },
    Connecting,
    Up,
}

/// The pause before one node is connected again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { next: RETRY_FIRST }
    }

    /// The connection ended: the pause before the next try. `up_for` is how long it
    /// had been up (`None`: it never came up). The pause doubles on each end, up to
    /// [`RETRY_MAX`], unless the connection had been up for [`STABLE`] (then it starts
    /// from [`RETRY_FIRST`] again).
    pub fn after_end(&mut self, up_for: Option<Duration>) -> Duration {
        if up_for.is_some_and(|d| d >= STABLE) {
            self.next = RETRY_FIRST;
        }
        let pause = self.next;
        self.next = (pause * 2).min(RETRY_MAX);
        pause
    }

    /// Start from [`RETRY_FIRST`] again (the node was seen down by the health checks:
    /// the connection was lost to that, not to a takeover fight).
    pub fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

/// What reconcile does with one node's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The node is not usable: drop the connection (retry after [`RETRY_FIRST`]).
    Drop,
    /// Its retry time came and the node is usable: connect.
    Connect,
    /// Waiting out a back-off while the health checks see the node down: retry as
    /// soon as it is usable again, with the back-off from the start.
    RetryWhenUp,
    Keep,
}

/// The step for a connection in `state` to a node that is `usable` (up and taking
/// sessions) at `now`; `contended`: a newer session with the client id is being set
/// up on this gateway, and connecting now would take the id back from it.
pub(super) fn step(state: LinkState, usable: bool, contended: bool, now: Instant) -> Step {
    match state {
        LinkState::Up | LinkState::Connecting if !usable => Step::Drop,
        LinkState::Idle { retry_at } if usable && retry_at <= now && !contended => Step::Connect,
        LinkState::Idle { retry_at } if !usable && retry_at > now => Step::RetryWhenUp,
        _ => Step::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_end_early_double_the_pause_up_to_30_s() {
        let mut b = Backoff::new();
        let pauses: Vec<u64> = (0..7)
            .map(|i| {
                // Never up, or up for less than STABLE: a refusal, a takeover fight.
                let up_for = (i % 2 == 1).then_some(STABLE - Duration::from_millis(1));
                b.after_end(up_for).as_secs()
            })
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_link_that_was_up_for_a_while_is_retried_after_1_s() {
        let mut b = Backoff::new();
        for _ in 0..4 {
            b.after_end(None);
        }
        assert_eq!(b.after_end(Some(STABLE)), RETRY_FIRST);
        assert_eq!(b.after_end(None), 2 * RETRY_FIRST, "and doubles from there");
    }

    #[test]
    fn a_reset_starts_the_back_off_over() {
        let mut b = Backoff::new();
        for _ in 0..5 {
            b.after_end(None);
        }
        b.reset();
        assert_eq!(b.after_end(None), RETRY_FIRST);
    }

    #[test]
    fn reconcile_steps() {
        let now = Instant::now();
        let due = LinkState::Idle { retry_at: now };
        let later = LinkState::Idle {
            retry_at: now + Duration::from_secs(5),
        };
        use LinkState::{Connecting, Up};
        // (state, usable, contended) → step
        let cases = [
            (Up, true, false, Step::Keep),
            (Up, false, false, Step::Drop),
            (Connecting, false, true, Step::Drop),
            (Connecting, true, false, Step::Keep),
            (due, true, false, Step::Connect),
            (due, true, true, Step::Keep),
            (due, false, false, Step::Keep),
            (later, true, false, Step::Keep),
            (later, false, false, Step::RetryWhenUp),
            (later, false, true, Step::RetryWhenUp),
        ];
        for (state, usable, contended, want) in cases {
            assert_eq!(
                step(state, usable, contended, now),
                want,
                "{state:?} usable={usable} contended={contended}"
            );
        }
    }
}
