//! Latency distributions as DDSketches: every quantile within 1 % of the exact one
//! (relative accuracy, whatever the distribution), mergeable across buckets, services and
//! replicas, and a few hundred bytes for a typical spread of latencies.
//!
//! A quantile `q` of `n` values is the value of rank `floor(q × (n − 1))` in sorted
//! order (the sketch's definition, and the one the accuracy property is tested against);
//! `max` is exact. Latencies at or under 1e-9 ms count as 0.
//!
//! This module does not decide which samples go together (the performance service's
//! tiers do, and the gateway's sample feed folds by them).

use sketches_ddsketch::{Config, DDSketch};

/// The relative accuracy every quantile keeps.
pub const RELATIVE_ACCURACY: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
pub enum SketchError {
    #[error("a stored latency sketch cannot be decoded: {0}")]
    Decode(String),
    #[error("latency sketches with different parameters cannot be merged")]
    Merge,
}

/// The latencies (ms) of a set of requests.
#[derive(Clone)]
pub struct LatencySketch(DDSketch);

impl std::fmt::Debug for LatencySketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencySketch").field("count", &self.count()).field("max", &self.max()).finish()
    }
}

impl Default for LatencySketch {
    fn default() -> Self {
        LatencySketch::new()
    }
}

impl LatencySketch {
    pub fn new() -> LatencySketch {
        // The defaults: 1 % accuracy, 2048 bins (enough for 1e-9 ms to 1 h without
        // collapsing), values under 1e-9 counted as zero.
        debug_assert_eq!(Config::defaults(), Config::new(RELATIVE_ACCURACY, 2048, 1e-9));
        LatencySketch(DDSketch::new(Config::defaults()))
    }

    pub fn add(&mut self, latency_ms: f64) {
        self.0.add(latency_ms);
    }

    pub fn merge(&mut self, other: &LatencySketch) -> Result<(), SketchError> {
        self.0.merge(&other.0).map_err(|_| SketchError::Merge)
    }

    pub fn count(&self) -> u64 {
        self.0.count() as u64
    }

    /// The value of rank `floor(q × (count − 1))`; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.0.quantile(q.clamp(0.0, 1.0)).ok().flatten()
    }

    pub fn max(&self) -> Option<f64> {
        self.0.max()
    }

    pub fn mean(&self) -> Option<f64> {
        let count = self.count();
        self.0.sum().filter(|_| count > 0).map(|sum| sum / count as f64)
    }

    /// The value at `rank` (0-based, in sorted order), within the sketch's accuracy.
    fn value_at_rank(&self, rank: u64, count: u64) -> f64 {
        let last = count - 1;
        let q = if rank == 0 {
            0.0
        } else if rank >= last {
            1.0
        } else {
            // The middle of the rank's interval, so that float rounding cannot move
            // `floor(q × last)` to a neighbour.
            (rank as f64 + 0.5) / last as f64
        };
        self.quantile(q).unwrap_or(0.0)
    }

    /// How many values are under `threshold` (within the sketch's accuracy: values within
    /// 1 % of the threshold may be counted on either side). A binary search over ranks.
    pub fn count_below(&self, threshold: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        // The first rank whose value is at or above the threshold.
        let (mut low, mut high) = (0u64, count);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.value_at_rank(middle, count) < threshold {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The DataDog binary encoding (the Java library's), as stored.
    pub fn encode(&self) -> Vec<u8> {
        self.0.to_java_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<LatencySketch, SketchError> {
        DDSketch::from_java_bytes(bytes).map(LatencySketch).map_err(|error| SketchError::Decode(format!("{error:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() as f64 - 1.0)) as usize]
    }

    fn within_accuracy(estimate: f64, exact: f64) -> bool {
        // A hair of slack for the float arithmetic of the bin boundaries.
        (estimate - exact).abs() <= exact * RELATIVE_ACCURACY * (1.0 + 1e-9)
    }

    /// Latencies as the gateway sees them: zeros, microseconds, typical milliseconds and
    /// the occasional minutes-long outlier.
    fn latency() -> impl Strategy<Value = f64> {
        prop_oneof![
            1 => Just(0.0),
            2 => 0.001f64..1.0,
            6 => 1.0f64..2_000.0,
            1 => 2_000.0f64..3_600_000.0,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every percentile the API reports is within 1 % of the exact one found by
        /// sorting, however the values are split into sketches and merged back.
        #[test]
        fn percentiles_are_within_one_percent_of_sorting(
            values in prop::collection::vec(latency(), 1..2_000),
            parts in 1usize..8,
        ) {
            let mut pieces = vec![LatencySketch::new(); parts];
            for (i, value) in values.iter().enumerate() {
                pieces[i % parts].add(*value);
            }
            let mut merged = LatencySketch::new();
            for piece in &pieces {
                // Through the stored encoding, as a report reads them.
                merged.merge(&LatencySketch::decode(&piece.encode()).unwrap()).unwrap();
            }
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            prop_assert_eq!(merged.count(), values.len() as u64);
            for q in [0.5, 0.9, 0.95, 0.99] {
                let estimate = merged.quantile(q).unwrap();
                let exact = exact(&sorted, q);
                prop_assert!(within_accuracy(estimate, exact), "q{q}: {estimate} vs exact {exact}");
            }
            prop_assert_eq!(merged.max().unwrap(), *sorted.last().unwrap());
        }

        /// The count under a threshold is exact for values clear of the threshold's 1 %
        /// neighbourhood.
        #[test]
        fn counts_below_a_threshold_match_sorting(
            values in prop::collection::vec(latency(), 1..1_000),
            threshold in 0.5f64..5_000.0,
        ) {
            let values: Vec<f64> = values
                .into_iter()
                .filter(|v| (v - threshold).abs() > threshold * 2.0 * RELATIVE_ACCURACY)
                .collect();
            prop_assume!(!values.is_empty());
            let mut sketch = LatencySketch::new();
            values.iter().for_each(|v| sketch.add(*v));
            let exact = values.iter().filter(|v| **v < threshold).count() as u64;
            prop_assert_eq!(sketch.count_below(threshold), exact);
        }
    }

    #[test]
    fn an_empty_sketch_has_no_percentiles_and_nothing_below() {
        let sketch = LatencySketch::new();
        assert_eq!(sketch.quantile(0.5), None);
        assert_eq!(sketch.max(), None);
        assert_eq!(sketch.mean(), None);
        assert_eq!(sketch.count_below(100.0), 0);
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(LatencySketch::decode(&[0xff, 0x13, 0x07]).is_err());
    }
}
