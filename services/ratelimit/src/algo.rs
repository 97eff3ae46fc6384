//! The two algorithms as pure functions of "now" and the stored state, in integers.
//!
//! The Lua scripts in `gcra.lua` and `sliding_window.lua` perform exactly the same
//! arithmetic on the Redis server, so a decision does not depend on where it was made. All
//! quantities are kept below 2^53 so that Lua's doubles represent them exactly.

use crate::Limit;
use std::time::Duration;

/// Longest emission interval or tolerance, in µs (about 8.9 years); larger ones are clamped.
const MAX_SPAN_US: u64 = 1 << 48;
/// Longest sliding-window period, in ms (about 2.2 years).
const MAX_PERIOD_MS: u64 = 1 << 36;
/// Largest sliding-window quota (rate + burst).
const MAX_QUOTA: u64 = 1 << 36;
/// Fixed-point denominator of the previous window's weight.
pub(crate) const WEIGHT_ONE: u64 = 1 << 16;

/// A [`Limit`]'s numbers, normalised so that no computation can divide by zero or
/// leave the exactly-representable range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rates {
    /// rate + burst: the sliding window's bound, and the most a GCRA admits per period.
    pub quota: u64,
    /// GCRA emission interval T = period / rate, in µs.
    pub interval_us: u64,
    /// GCRA tolerance = burst × T, in µs.
    pub tolerance_us: u64,
    /// Sliding-window period, in ms.
    pub period_ms: u64,
}

impl Rates {
    pub(crate) fn of(limit: &Limit) -> Rates {
        let rate = limit.rate.max(1);
        let period_us = u64::try_from(limit.period.as_micros()).unwrap_or(u64::MAX);
        let interval_us = (period_us / rate).clamp(1, MAX_SPAN_US);
        let period_ms = u64::try_from(limit.period.as_millis()).unwrap_or(u64::MAX).clamp(1, MAX_PERIOD_MS);
        Rates {
            quota: rate.saturating_add(limit.burst).min(MAX_QUOTA),
            interval_us,
            tolerance_us: interval_us.saturating_mul(limit.burst).min(MAX_SPAN_US),
            period_ms,
        }
    }
}

/// One decision, before it is dressed as a [`crate::Decision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub allowed: bool,
    pub remaining: u64,
    pub reset_after: Duration,
    pub retry_after: Duration,
}

/// GCRA at `now` (µs) for a key whose stored theoretical arrival time is `tat` (µs).
///
/// Returns the outcome and, when admitted, the TAT to store.
pub(crate) fn gcra(now: u64, tat: Option<u64>, rates: &Rates) -> (Outcome, Option<u64>) {
    let (interval, tolerance) = (rates.interval_us, rates.tolerance_us);
    let tat = tat.map_or(now, |tat| tat.max(now));
    let allow_at = tat.saturating_sub(tolerance);
    if now < allow_at {
        let outcome = Outcome {
            allowed: false,
            remaining: 0,
            reset_after: Duration::from_micros(tat - now),
            retry_after: Duration::from_micros(allow_at - now),
        };
        return (outcome, None);
    }
    let new_tat = tat + interval;
    let outcome = Outcome {
        allowed: true,
        // Each further request right now moves the TAT on by one interval; it is admitted
        // while TAT - tolerance <= now.
        remaining: (now + tolerance - tat) / interval,
        reset_after: Duration::from_micros(new_tat - now),
        retry_after: Duration::ZERO,
    };
    (outcome, Some(new_tat))
}

/// Sliding-window counters of one key: requests admitted in fixed window `window`
/// (index = time / period) and in the window before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counters {
    pub window: u64,
    pub current: u64,
    pub previous: u64,
}

impl Counters {
    /// Time (ms) from which these counters no longer affect any decision.
    pub(crate) fn expires_at(&self, period_ms: u64) -> u64 {
        self.window.saturating_add(2).saturating_mul(period_ms)
    }
}

/// Weight of the previous window `elapsed` ms into the current one, out of [`WEIGHT_ONE`].
fn weight(elapsed: u64, period: u64) -> u64 {
    (period - elapsed) * WEIGHT_ONE / period
}

/// Smallest elapsed time (ms) at which [`weight`] is at most `max_weight` (< WEIGHT_ONE).
fn first_elapsed_with_weight_at_most(max_weight: u64, period: u64) -> u64 {
    period * (WEIGHT_ONE - max_weight - 1) / WEIGHT_ONE + 1
}

/// Sliding window at `now` (ms): the estimate is previous × weight + current, where the
/// weight falls linearly from 1 to 0 across the current window; a request is admitted
/// while the estimate is below the quota.
///
/// Returns the outcome and, when admitted, the counters to store.
pub(crate) fn sliding_window(now: u64, stored: Option<Counters>, rates: &Rates) -> (Outcome, Option<Counters>) {
    let (period, quota) = (rates.period_ms, rates.quota);
    let mut window = now / period;
    let (current, previous) = match stored {
        Some(c) if c.window == window => (c.current, c.previous),
        Some(c) if c.window + 1 == window => (0, c.current),
        // A clock behind the stored window (e.g. another server's): keep the counts.
        Some(c) if c.window > window => {
            window = c.window;
            (c.current, c.previous)
        }
        _ => (0, 0),
    };
    let elapsed = now.saturating_sub(window * period);
    let one = WEIGHT_ONE;
    let estimate = previous * weight(elapsed, period) + current * one;
    let full = quota * one;
    if estimate >= full {
        // Either the previous window's weight decays enough within this window...
        let mut retry = None;
        if current < quota && previous > 0 {
            let max_weight = ((quota - current) * one - 1) / previous;
            let at = first_elapsed_with_weight_at_most(max_weight, period);
            if at < period {
                retry = Some(at - elapsed);
            }
        }
        // ...or the current window becomes the previous one and must decay in turn.
        let retry = retry.unwrap_or_else(|| {
            let at = if current < quota { 0 } else { first_elapsed_with_weight_at_most((full - 1) / current, period) };
            period - elapsed + at
        });
        let reset = if current > 0 { 2 * period - elapsed } else { period - elapsed };
        let outcome = Outcome {
            allowed: false,
            remaining: 0,
            reset_after: Duration::from_millis(reset),
            retry_after: Duration::from_millis(retry),
        };
        return (outcome, None);
    }
    let estimate = estimate + one;
    let outcome = Outcome {
        allowed: true,
        remaining: full.saturating_sub(estimate).div_ceil(one),
        reset_after: Duration::from_millis(2 * period - elapsed),
        retry_after: Duration::ZERO,
    };
    (outcome, Some(Counters { window, current: current + 1, previous }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, OnUnavailable};

    fn rates(rate: u64, period: Duration, burst: u64) -> Rates {
        Rates::of(&Limit {
            policy: "p".into(),
            algorithm: Algorithm::Gcra,
            rate,
            period,
            burst,
            on_unavailable: OnUnavailable::Local,
        })
    }

    /// Runs GCRA for `n` requests at `now`, threading the state; returns the outcomes.
    fn gcra_burst(now: u64, tat: &mut Option<u64>, r: &Rates, n: usize) -> Vec<Outcome> {
        (0..n)
            .map(|_| {
                let (outcome, new) = gcra(now, *tat, r);
                if new.is_some() {
                    *tat = new;
                }
                outcome
            })
            .collect()
    }

    fn sw_burst(now: u64, state: &mut Option<Counters>, r: &Rates, n: usize) -> Vec<Outcome> {
        (0..n)
            .map(|_| {
                let (outcome, new) = sliding_window(now, *state, r);
                if new.is_some() {
                    *state = new;
                }
                outcome
            })
            .collect()
    }

    #[test]
    fn rates_are_normalised() {
        let r = rates(10, Duration::from_secs(1), 4);
        assert_eq!(r, Rates { quota: 14, interval_us: 100_000, tolerance_us: 400_000, period_ms: 1000 });
        // A zero rate or period cannot divide by zero.
        let r = rates(0, Duration::ZERO, 0);
        assert_eq!((r.quota, r.interval_us, r.period_ms), (1, 1, 1));
        // Absurd bursts stay within Lua's exact integers.
        let r = rates(1, Duration::from_secs(86_400), u64::MAX);
        assert_eq!((r.tolerance_us, r.quota), (MAX_SPAN_US, MAX_QUOTA));
    }

    #[test]
    fn gcra_admits_burst_plus_one_then_one_per_interval() {
        let r = rates(10, Duration::from_secs(1), 4);
        let mut tat = None;
        let now = 5_000_000;
        let outcomes = gcra_burst(now, &mut tat, &r, 6);
        let allowed: Vec<bool> = outcomes.iter().map(|o| o.allowed).collect();
        assert_eq!(allowed, [true, true, true, true, true, false]);
        let remaining: Vec<u64> = outcomes.iter().map(|o| o.remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0, 0]);
        assert_eq!(outcomes[0].reset_after, Duration::from_millis(100));
        assert_eq!(outcomes[4].reset_after, Duration::from_millis(500));
        assert_eq!(outcomes[5].retry_after, Duration::from_millis(100));
        assert_eq!(outcomes[5].reset_after, Duration::from_millis(500));
        // One interval later exactly one more is admitted.
        let later = gcra_burst(now + 100_000, &mut tat, &r, 2);
        assert!(later[0].allowed && !later[1].allowed);
        assert_eq!(later[1].retry_after, Duration::from_millis(100));
        // After a long idle period the full burst is available again.
        let idle = gcra_burst(now + 10_000_000, &mut tat, &r, 1);
        assert_eq!(idle[0].remaining, 4);
    }

    #[test]
    fn gcra_without_burst_admits_one_per_interval() {
        let r = rates(3, Duration::from_secs(1), 0);
        let mut tat = None;
        let outcomes = gcra_burst(0, &mut tat, &r, 2);
        assert!(outcomes[0].allowed && outcomes[0].remaining == 0);
        assert!(!outcomes[1].allowed);
        assert_eq!(outcomes[1].retry_after, Duration::from_micros(333_333));
    }

    /// For many shapes and request times, `remaining`, `retry_after` and `reset_after`
    /// are checked against what actually happens.
    fn check_promises<S: Copy>(
        decide: impl Fn(u64, Option<S>) -> (Outcome, Option<S>),
        unit: Duration,
        max_remaining: u64,
        times: impl Iterator<Item = u64>,
    ) {
        let units = |d: Duration| u64::try_from(d.as_nanos() / unit.as_nanos()).unwrap();
        let mut state = None;
        let (mut admitted, mut refused) = (0, 0);
        for now in times {
            let (outcome, new) = decide(now, state);
            if outcome.allowed {
                admitted += 1;
            } else {
                refused += 1;
            }
            if let Some(new) = new {
                // Exactly `remaining` more are admitted at the same instant.
                let mut probe = Some(new);
                for i in 0..=outcome.remaining {
                    let (o, n) = decide(now, probe);
                    assert_eq!(o.allowed, i < outcome.remaining, "remaining {} at {now}", outcome.remaining);
                    probe = n.or(probe);
                }
                state = Some(new);
            } else {
                let retry = units(outcome.retry_after);
                assert!(retry > 0);
                assert!(!decide(now + retry - 1, state).0.allowed, "retry_after too early at {now}");
                assert!(decide(now + retry, state).0.allowed, "retry_after too late at {now}");
            }
            // At reset the quota is whole again.
            let reset = units(outcome.reset_after);
            assert_eq!(decide(now + reset, state).0.remaining, max_remaining - 1, "reset_after at {now}");
        }
        assert!(admitted > 50 && refused > 50, "schedule exercises both: {admitted} admitted, {refused} refused");
    }

    /// Request times: bursts of 4 at one instant, gaps of 0 to 4 `step`s, and now and then
    /// an idle stretch; on average twice the steady rate when `step` is its interval.
    fn schedule(step: u64) -> impl Iterator<Item = u64> {
        (0..2000u64).scan(1_000_000u64, move |t, i| {
            if i % 4 == 0 {
                *t += (i * 7919 % 13) * step / 3;
            }
            if i % 97 == 0 {
                *t += 10 * step;
            }
            Some(*t)
        })
    }

    #[test]
    fn gcra_promises_hold() {
        for (rate, secs, burst) in [(10, 1, 4), (3, 1, 0), (7, 2, 2), (100, 60, 50)] {
            let r = rates(rate, Duration::from_secs(secs), burst);
            check_promises(|now, s| gcra(now, s, &r), Duration::from_micros(1), burst + 1, schedule(r.interval_us));
        }
    }

    #[test]
    fn sliding_window_promises_hold() {
        for (rate, secs, burst) in [(5, 1, 2), (3, 1, 0), (7, 2, 2), (100, 60, 50), (1, 1, 0)] {
            let r = rates(rate, Duration::from_secs(secs), burst);
            let step = r.period_ms / (rate + burst);
            check_promises(|now, s| sliding_window(now, s, &r), Duration::from_millis(1), r.quota, schedule(step));
        }
    }

    #[test]
    fn sliding_window_admits_quota_per_window_then_weighs_previous() {
        let r = rates(5, Duration::from_secs(1), 2);
        let mut state = None;
        let outcomes = sw_burst(10_000, &mut state, &r, 8);
        assert_eq!(outcomes.iter().filter(|o| o.allowed).count(), 7);
        assert_eq!(outcomes[0].remaining, 6);
        assert_eq!(outcomes[0].reset_after, Duration::from_secs(2));
        // Refused until the window ends, plus the 1 ms after which the previous window's
        // weight has dropped below 1.
        assert_eq!(outcomes[7].retry_after, Duration::from_millis(1001));
        // A quarter into the next window the previous 7 weigh 5.25: two more fit.
        let next = sw_burst(11_250, &mut state, &r, 3);
        let allowed: Vec<bool> = next.iter().map(|o| o.allowed).collect();
        assert_eq!(allowed, [true, true, false]);
        // Two windows later nothing of it is left.
        let later = sw_burst(13_000, &mut state, &r, 1);
        assert_eq!(later[0].remaining, 6);
    }

    #[test]
    fn sliding_window_tolerates_a_clock_behind_the_stored_window() {
        let r = rates(2, Duration::from_secs(1), 0);
        let mut state = None;
        sw_burst(5_500, &mut state, &r, 2);
        let behind = sw_burst(4_900, &mut state, &r, 1);
        assert!(!behind[0].allowed, "counts of a later window still apply");
    }
}
