//! The HTTP transport's circuit breaker, as anycable-go's (gobreaker, two-step): when most
//! recent calls fail to reach the app, calls fail at once for a while instead of each
//! waiting for its timeout, then a few probe calls decide whether the app is back.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// When the breaker trips and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// The window over which calls are counted.
    pub window: Duration,
    /// Fewest calls in the window before the breaker may trip.
    pub min_calls: u32,
    /// Share of failed calls (0–1) in the window that trips it.
    pub failure_ratio: f32,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Probe calls let through half-open; that many successes in a row close it again.
    pub probes: u32,
}

impl Default for BreakerPolicy {
    /// anycable-go's: ≥ 10 calls in 10 s with ≥ 80 % transport failures; open 5 s; 5 probes.
    fn default() -> Self {
        BreakerPolicy {
            window: Duration::from_secs(10),
            min_calls: 10,
            failure_ratio: 0.8,
            open_for: Duration::from_secs(5),
            probes: 5,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        since: Instant,
        calls: u32,
        failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        admitted: u32,
        succeeded: u32,
    },
}

/// A circuit breaker. The lock is held for a few comparisons, never across a call.
#[derive(Debug)]
pub(crate) struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
}

impl Breaker {
    pub(crate) fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            state: Mutex::new(State::Closed {
                since: Instant::now(),
                calls: 0,
                failures: 0,
            }),
        }
    }

    /// Whether a call may go out now.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        match &mut *state {
            State::Closed { .. } => true,
            State::Open { until } if now < *until => false,
            State::Open { .. } => {
                *state = State::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                };
                true
            }
            State::HalfOpen { admitted, .. } if *admitted < self.policy.probes => {
                *admitted += 1;
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// Records how an admitted call ended (`reached`: the app answered at all).
    pub(crate) fn record(&self, reached: bool, now: Instant) {
        let mut state = self.state.lock();
        match &mut *state {
            State::Closed {
                since,
                calls,
                failures,
            } => {
                if now.duration_since(*since) >= self.policy.window {
                    *since = now;
                    *calls = 0;
                    *failures = 0;
                }
                *calls += 1;
                if !reached {
                    *failures += 1;
                }
                if *calls >= self.policy.min_calls
                    && *failures as f32 >= self.policy.failure_ratio * *calls as f32
                {
                    *state = State::Open {
                        until: now + self.policy.open_for,
                    };
                }
            }
            State::Open { .. } => {}
            State::HalfOpen { succeeded, .. } => {
                if !reached {
                    *state = State::Open {
                        until: now + self.policy.open_for,
                    };
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.policy.probes {
                        *state = State::Closed {
                            since: now,
                            calls: 0,
                            failures: 0,
                        };
                    }
                }
            }
        }
    }

    /// Whether the breaker is open now (for the metrics).
    pub(crate) fn is_open(&self) -> bool {
        matches!(*self.state.lock(), State::Open { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_on_failures_then_probes_and_closes() {
        let b = Breaker::new(BreakerPolicy::default());
        let t0 = Instant::now();
        for i in 0..9 {
            assert!(b.admit(t0));
            b.record(false, t0 + Duration::from_millis(i));
        }
        assert!(!b.is_open(), "fewer than 10 calls never trip it");
        assert!(b.admit(t0));
        b.record(false, t0 + Duration::from_millis(10));
        assert!(b.is_open());
        assert!(!b.admit(t0 + Duration::from_secs(4)), "open: fails fast");
        let later = t0 + Duration::from_secs(6);
        for _ in 0..5 {
            assert!(b.admit(later), "half-open lets 5 probes through");
        }
        assert!(!b.admit(later), "but not a sixth");
        for _ in 0..5 {
            b.record(true, later);
        }
        assert!(!b.is_open());
        assert!(b.admit(later));
    }

    #[test]
    fn a_failed_probe_opens_it_again_and_successes_keep_it_closed() {
        let b = Breaker::new(BreakerPolicy::default());
        let t0 = Instant::now();
        for _ in 0..10 {
            b.admit(t0);
            b.record(false, t0);
        }
        let later = t0 + Duration::from_secs(6);
        assert!(b.admit(later));
        b.record(false, later);
        assert!(b.is_open());

        let b = Breaker::new(BreakerPolicy::default());
        for i in 0..100 {
            b.admit(t0);
            b.record(i % 2 == 0, t0);
        }
        assert!(!b.is_open(), "50 % failures stay under 80 %");
    }
}
