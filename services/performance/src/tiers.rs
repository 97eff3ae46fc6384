//! The time buckets samples are kept in, and how a window is read back from them.
//!
//! Every sample is merged into four buckets at once: its 10-second bucket (kept 2 days),
//! its 5-minute bucket (kept 15 days), its hour and its (UTC) day (both kept 92 days, past
//! the longest SLO window of 90 days). A window is read from the coarsest buckets that lie
//! wholly inside it, and its edges from finer ones, so that a 30-day report reads 29 or 30
//! days and a few dozen finer buckets rather than 720 hours or 259,200 ten-second ones.
//!
//! The rule of membership is the bucket's start: a bucket whose start lies in `[from, to)`
//! counts whole. Where the finer buckets of an edge have expired (a report at a past `at`
//! older than 2 or 15 days), the edge is read at the resolution still kept, and the
//! window is then exact only to that resolution.

/// One resolution of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub seconds: i64,
    pub retention_ms: i64,
}

const DAY_MS: i64 = 86_400_000;

/// Finest first.
pub const TIERS: [Tier; 4] = [
    Tier { seconds: 10, retention_ms: 2 * DAY_MS },
    Tier { seconds: 300, retention_ms: 15 * DAY_MS },
    Tier { seconds: 3_600, retention_ms: 92 * DAY_MS },
    Tier { seconds: 86_400, retention_ms: 92 * DAY_MS },
];

/// Samples older than this are refused: no SLO window reaches further back.
pub const MAX_SAMPLE_AGE_MS: i64 = 90 * DAY_MS;

/// Samples stamped further ahead than this (clock skew) are refused.
pub const MAX_SAMPLE_AHEAD_MS: i64 = 5 * 60_000;

impl Tier {
    pub fn millis(&self) -> i64 {
        self.seconds * 1000
    }

    /// The start of the bucket holding `at_ms`.
    pub fn bucket(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.millis()) * self.millis()
    }

    /// Whether this tier still holds the bucket of `at_ms` at `now_ms`.
    pub fn keeps(&self, at_ms: i64, now_ms: i64) -> bool {
        at_ms >= now_ms - self.retention_ms
    }
}

/// Buckets of one resolution whose starts lie in `[from_ms, to_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub resolution_s: i64,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The spans that read `[from_ms, to_ms)` at `now_ms`: whole coarse buckets in the middle,
/// finer ones at the edges while they are kept.
pub fn cover(from_ms: i64, to_ms: i64, now_ms: i64) -> Vec<Span> {
    let mut spans = Vec::new();
    cover_at(from_ms, to_ms, TIERS.len() - 1, now_ms, &mut spans);
    spans
}

fn cover_at(from: i64, to: i64, tier: usize, now: i64, out: &mut Vec<Span>) {
    if from >= to {
        return;
    }
    let coarse = TIERS[tier];
    if tier == 0 {
        out.push(Span { resolution_s: coarse.seconds, from_ms: from, to_ms: to });
        return;
    }
    let finer = TIERS[tier - 1];
    let step = coarse.millis();
    let first_whole = from.div_euclid(step) * step + if from.rem_euclid(step) == 0 { 0 } else { step };
    let end_whole = to.div_euclid(step) * step;
    if first_whole >= end_whole {
        if finer.keeps(from, now) {
            cover_at(from, to, tier - 1, now, out);
        } else {
            out.push(Span { resolution_s: coarse.seconds, from_ms: from, to_ms: to });
        }
        return;
    }
    out.push(Span { resolution_s: coarse.seconds, from_ms: first_whole, to_ms: end_whole });
    // The left edge: finer buckets when kept; otherwise the coarse bucket it starts in
    // begins before `from` and is left out.
    if finer.keeps(from, now) {
        cover_at(from, first_whole, tier - 1, now, out);
    }
    if finer.keeps(end_whole, now) {
        cover_at(end_whole, to, tier - 1, now, out);
    } else {
        out.push(Span { resolution_s: coarse.seconds, from_ms: end_whole, to_ms: to });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const M: i64 = 60_000;

    /// The buckets a cover reads, as (resolution, start) pairs.
    fn buckets(spans: &[Span]) -> Vec<(i64, i64)> {
        let mut all = Vec::new();
        for span in spans {
            let step = span.resolution_s * 1000;
            let mut start = span.from_ms.div_euclid(step) * step;
            if start < span.from_ms {
                start += step;
            }
            while start < span.to_ms {
                all.push((span.resolution_s, start));
                start += step;
            }
        }
        all
    }

    #[test]
    fn a_recent_window_is_read_exactly_once_at_every_ten_seconds() {
        let now = 1_000 * H + 17 * M + 23_000;
        let from = now - 3 * H - 7 * M;
        let read = buckets(&cover(from, now, now));
        // Every 10-second bucket start in [from, now) is covered by exactly one bucket read.
        let mut t = TIERS[0].bucket(from);
        if t < from {
            t += 10_000;
        }
        while t < now {
            let holders = read.iter().filter(|(res, start)| *start <= t && t < start + res * 1000).count();
            assert_eq!(holders, 1, "10 s bucket at {t} is read {holders} times");
            t += 10_000;
        }
        // And nothing outside the window is read.
        assert!(read.iter().all(|(_, start)| *start >= from && *start < now));
        // Whole hours are read as hours.
        assert_eq!(read.iter().filter(|(res, _)| *res == 3_600).count(), 2);
    }

    #[test]
    fn a_thirty_day_window_reads_days_in_the_middle_and_hours_at_its_edges() {
        let now = 10_000 * H + 5 * M;
        let from = now - 30 * DAY_MS;
        let spans = cover(from, now, now);
        let read = buckets(&spans);
        let days = read.iter().filter(|(res, _)| *res == 86_400).count();
        let hours = read.iter().filter(|(res, _)| *res == 3_600).count();
        assert_eq!(days, 29, "whole days inside the window");
        assert!(hours <= 2 * 23, "{hours} hours at the edges");
        // Every hour of the window but the partial ones at its edges is read exactly once.
        let mut hour = from.div_euclid(H) * H + H;
        while hour + H <= now - H {
            let holders = read.iter().filter(|(res, start)| *start <= hour && hour < start + res * 1000).count();
            assert_eq!(holders, 1, "hour at {hour} is read {holders} times");
            hour += H;
        }
        // Far from now the 5-minute and 10-second buckets have expired: the old edge is
        // read at hourly resolution, never at a resolution no longer kept.
        for (res, start) in &read {
            let tier = TIERS.iter().find(|t| t.seconds == *res).unwrap();
            assert!(tier.keeps(*start, now), "{res}s bucket at {start} has expired");
        }
        assert!(read.len() < 120, "{} buckets", read.len());
    }

    #[test]
    fn an_empty_window_reads_nothing() {
        assert!(cover(5 * H, 5 * H, 6 * H).is_empty());
    }
}
