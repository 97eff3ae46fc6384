//! How a [`Limit`] is published in the `RateLimit-Policy` and `RateLimit` response fields
//! of the IETF httpapi ratelimit-headers draft, and how a client reads a GCRA limit back.
//! The gateway's route policies and its token endpoint both answer with these fields, so
//! the rule is here once: [`crate::Decision::write_headers`] writes it, [`read`] and
//! [`remaining`] read it.
//!
//! # What the items say
//!
//! Under the draft a `RateLimit-Policy` item `"name";q=Q;w=W` allots `Q` quota units (here
//! requests) per window of `W` seconds, and a client keeps within every item it was given.
//! A window allotment says nothing of how the requests may be spread inside the window:
//! a client may send all `Q` at once, at the end of one window and again at the start of
//! the next.
//!
//! - **Sliding window** (`rate` per `period`, `burst`): the limiter admits while its
//!   estimate of the requests in the last `period` is below `rate + burst`, so one item
//!   says it exactly: `"{policy}";q={rate + burst};w={period}`.
//! - **GCRA** (`rate` per `period`, `burst` b; T = period / rate): `b + 1` requests at once,
//!   then one every T. Any number of requests within a window of length d is admitted
//!   only up to `b + 1 + d / T`, and no single (q, w) pair has that shape: `rate + burst`
//!   per period (what this crate published before) overstates the sustained rate by the
//!   burst (a client keeping to it is refused), and `rate` per period alone hides the
//!   burst (and is refused when sent at once if `rate > b + 1`). Two items describe it:
//!   - the **rate** item `"{policy}";q={rate};w={period}`: the sustained rate, exactly;
//!   - the **burst** item `"{policy}-burst";q={b + 1};w={⌈(b + 1) × T⌉}`: the most
//!     requests admitted at once, and the time the limiter takes to earn all of them back.
//!
//!   The burst item alone is conservative: `b + 1` requests at once and again after
//!   `⌈(b + 1) × T⌉` s (or spread in any way inside such windows) are all admitted, since
//!   any d-long stretch then holds at most `(b + 1) × (1 + ⌊d / W⌋) ≤ b + 1 + d / T`. So a
//!   client that keeps within both items, as the draft asks, is never refused; one that
//!   knows the limiter is a GCRA reads the exact rate from the rate item and the exact
//!   burst from the burst item ([`read`]). When the two items would be equal (`rate =
//!   b + 1` and `⌈(b + 1) × T⌉ = period`, e.g. 1 per minute without burst) only the rate
//!   item is written: it is then the burst item as well.
//!
//! The `RateLimit` item names the burst item (or the only item) with `r`, the requests
//! admitted right now back to back after this one (at most `b` for a GCRA, never a
//! promise of one that would be refused), and `t`, the seconds until that quota is whole
//! again. The older `RateLimit-Limit` is that item's `q`. No `pk` (partition key) is
//! written: each answer is about the caller's own partition, and a key would show how
//! callers are told apart (their address, for anonymous ones) to anyone who reads it.

use crate::{Algorithm, Limit, algo::Rates};

/// Suffix of the name of a GCRA limit's burst item.
pub const BURST_SUFFIX: &str = "-burst";

/// One `RateLimit-Policy` item: a quota per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    /// Whether the item is the burst item (its name is the policy's with [`BURST_SUFFIX`]).
    pub burst: bool,
    pub quota: u64,
    pub window_secs: u64,
}

/// The items published for `limit`, and which of them `RateLimit` reports on (the last).
pub(crate) fn items(limit: &Limit) -> ([Item; 2], usize) {
    let rates = Rates::of(limit);
    let period = ceil_secs_us(u64::try_from(limit.period.as_micros()).unwrap_or(u64::MAX)).max(1);
    match limit.algorithm {
        Algorithm::SlidingWindow => {
            let only = Item { burst: false, quota: rates.quota, window_secs: period };
            ([only, only], 1)
        }
        Algorithm::Gcra => {
            let rate = Item { burst: false, quota: limit.rate.max(1), window_secs: period };
            let at_once = limit.burst.saturating_add(1);
            let refill_us = u128::from(at_once) * u128::from(rates.interval_us);
            let refill = u64::try_from(refill_us.div_ceil(1_000_000)).unwrap_or(u64::MAX).max(1);
            let burst = Item { burst: true, quota: at_once, window_secs: refill };
            if (burst.quota, burst.window_secs) == (rate.quota, rate.window_secs) {
                ([rate, rate], 1)
            } else {
                ([rate, burst], 2)
            }
        }
    }
}

fn ceil_secs_us(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// A GCRA limit as its rate and burst items publish it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishedGcra {
    /// Requests per `period_secs`, sustained.
    pub rate: u64,
    pub period_secs: u64,
    /// Requests admitted at once beyond the first (`b`: `b + 1` at once).
    pub burst: u64,
}

/// Reads the GCRA limit named `policy` from a `RateLimit-Policy` field value (several
/// field lines joined with commas are one list): its rate item and, when present, its burst
/// item (else the rate item is the burst item too, see the module documentation). `None`
/// when the field names no such policy or its parameters are not positive integers.
pub fn read(field: &str, policy: &str) -> Option<PublishedGcra> {
    let items = parse_list(field)?;
    let find = |name: &str| {
        items.iter().find(|(n, _)| n == name).and_then(|(_, params)| {
            let get = |key: &str| params.iter().find(|(k, _)| k == key).and_then(|(_, v)| *v);
            Some((get("q").filter(|q| *q > 0)?, get("w").filter(|w| *w > 0)?))
        })
    };
    let (rate, period_secs) = find(policy)?;
    let at_once = match find(&format!("{policy}{BURST_SUFFIX}")) {
        Some((q, _)) => q,
        None => rate,
    };
    Some(PublishedGcra { rate, period_secs, burst: at_once - 1 })
}

/// Reads the `r` (requests admitted right now) the `RateLimit` field value reports for
/// `policy` (its burst item, or the policy's only item).
pub fn remaining(field: &str, policy: &str) -> Option<u64> {
    let items = parse_list(field)?;
    let burst = format!("{policy}{BURST_SUFFIX}");
    [burst.as_str(), policy].into_iter().find_map(|name| {
        let (_, params) = items.iter().find(|(n, _)| n == name)?;
        params.iter().find(|(k, _)| k == "r").and_then(|(_, v)| *v)
    })
}

/// An item's name and its parameters (integer values; `None` for any other kind).
type Parsed = Vec<(String, Vec<(String, Option<u64>)>)>;

/// A structured-field list (RFC 9651 §4.2.1) of items whose bare items are strings or
/// tokens, as far as these fields need it: parameters with integer values are kept,
/// parameters of other kinds are skipped, inner lists are refused.
fn parse_list(field: &str) -> Option<Parsed> {
    let mut items = Vec::new();
    let mut rest = field.trim_matches([' ', '\t']);
    while !rest.is_empty() {
        let (name, after) = bare_name(rest)?;
        rest = after;
        let mut params = Vec::new();
        while let Some(after) = rest.strip_prefix(';') {
            let after = after.trim_start_matches(' ');
            let key_len = after
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c)))
                .unwrap_or(after.len());
            if key_len == 0 {
                return None;
            }
            let key = &after[..key_len];
            rest = &after[key_len..];
            let value = match rest.strip_prefix('=') {
                None => None,
                Some(value) => {
                    let (parsed, after) = bare_value(value)?;
                    rest = after;
                    parsed
                }
            };
            params.push((key.to_string(), value));
        }
        items.push((name, params));
        rest = rest.trim_start_matches([' ', '\t']);
        match rest.strip_prefix(',') {
            Some(after) => rest = after.trim_start_matches([' ', '\t']),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(items)
}

/// A string or token at the start of `s`, and what follows it.
fn bare_name(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => return Some((name, &quoted[at + 1..])),
                '\\' => name.push(chars.next()?.1),
                c => name.push(c),
            }
        }
        None
    } else {
        let end = s.find([';', ',', ' ', '\t']).unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

/// A parameter value at the start of `s`: `Some` for a non-negative integer, `None` for
/// any other bare item (skipped), and what follows it.
fn bare_value(s: &str) -> Option<(Option<u64>, &str)> {
    if s.starts_with('"') {
        let (_, rest) = bare_name(s)?;
        return Some((None, rest));
    }
    let end = s.find([';', ',', ' ', '\t']).unwrap_or(s.len());
    let (value, rest) = s.split_at(end);
    if value.is_empty() {
        return None;
    }
    let integer =
        (value.len() <= 15 && value.bytes().all(|b| b.is_ascii_digit())).then(|| value.parse().ok()).flatten();
    Some((integer, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OnUnavailable;
    use std::time::Duration;

    fn gcra(rate: u64, period_secs: u64, burst: u64) -> Limit {
        Limit {
            policy: "p".into(),
            algorithm: Algorithm::Gcra,
            rate,
            period: Duration::from_secs(period_secs),
            burst,
            on_unavailable: OnUnavailable::Local,
        }
    }

    /// Whether the limiter admits every request of `times` (µs), in order.
    fn all_admitted(limit: &Limit, times: impl Iterator<Item = u64>) -> bool {
        let rates = Rates::of(limit);
        let mut tat = None;
        for now in times {
            let (outcome, next) = crate::algo::gcra(now, tat, &rates);
            if !outcome.allowed {
                return false;
            }
            tat = next;
        }
        true
    }

    #[test]
    fn a_client_keeping_to_the_gcra_items_is_never_refused_and_reads_them_back() {
        for (rate, period, burst) in
            [(20, 1, 40), (5, 1, 10), (550, 60, 50), (5, 3600, 4), (1, 60, 0), (1000, 1, 0), (3, 7, 2)]
        {
            let limit = gcra(rate, period, burst);
            let (items, count) = items(&limit);
            let burst_item = items[count - 1];
            // The burst item's quota at once, again and again one window later.
            let window_us = burst_item.window_secs * 1_000_000;
            let bursts = (0..5u64).flat_map(|k| std::iter::repeat_n(k * window_us, burst_item.quota as usize));
            assert!(all_admitted(&limit, bursts), "{rate}/{period}s burst {burst}: {items:?}");
            // It is the whole burst: one more at once is refused.
            let over = std::iter::repeat_n(0, burst_item.quota as usize + 1);
            assert!(!all_admitted(&limit, over), "{rate}/{period}s burst {burst}: {items:?}");
            // The rate item is the sustained rate: its quota evenly over its window, for long.
            let rate_item = items[0];
            let step = rate_item.window_secs * 1_000_000 / rate_item.quota;
            assert!(all_admitted(&limit, (0..10 * rate_item.quota).map(|n| n * step)));
            let mut headers = Vec::new();
            let decision = crate::Decision {
                allowed: true,
                unavailable: false,
                limit: limit.quota(),
                remaining: burst,
                reset_after: Duration::from_secs(1),
                retry_after: Duration::ZERO,
                source: crate::Source::Local,
            };
            decision.write_headers(&limit, |field, value| headers.push((field, value.to_string())));
            let field = |f| headers.iter().find(|(name, _)| *name == f).map(|(_, v)| v.as_str()).unwrap();
            let read = read(field(crate::Field::Policy), "p");
            assert_eq!(read, Some(PublishedGcra { rate, period_secs: period, burst }), "{headers:?}");
            assert_eq!(remaining(field(crate::Field::RateLimit), "p"), Some(burst));
        }
    }

    #[test]
    fn a_sliding_window_is_one_item_of_rate_and_burst() {
        let limit = Limit { algorithm: Algorithm::SlidingWindow, ..gcra(100, 60, 20) };
        let (items, count) = items(&limit);
        assert_eq!(&items[..count], [Item { burst: false, quota: 120, window_secs: 60 }]);
    }

    #[test]
    fn lists_are_read_as_the_draft_writes_them() {
        let field = "\"token-issuance\";q=20;w=1, \"token-issuance-burst\";q=41;w=3;qu=\"requests\";pk=:YWJj:";
        assert_eq!(read(field, "token-issuance"), Some(PublishedGcra { rate: 20, period_secs: 1, burst: 40 }));
        assert_eq!(read("minute;q=1;w=60", "minute"), Some(PublishedGcra { rate: 1, period_secs: 60, burst: 0 }));
        assert_eq!(read(field, "other"), None);
        assert_eq!(read("\"a\";q=0;w=1", "a"), None, "a quota of nothing is no limit to read");
        assert_eq!(read("\"a\";q=1;w=1,,", "a"), None, "not a list");
        assert_eq!(remaining("\"token-issuance-burst\";r=39;t=1", "token-issuance"), Some(39));
        assert_eq!(remaining("\"five\";r=0;t=3600", "five"), Some(0));
        assert_eq!(remaining("\"five\";t=3600", "five"), None);
    }
}
