//! Zipf-distributed choices: a few items are asked for most of the time (the hot set the
//! cache serves), the long tail rarely.

/// Ranks `0..n` with P(k) proportional to 1 / (k + 1)^s.
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cumulative = Vec::with_capacity(n.max(1));
        let mut total = 0.0;
        for k in 0..n.max(1) {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        Zipf { cumulative }
    }

    /// The rank `u` (uniform in 0..1) falls on.
    pub fn rank_at(&self, u: f64) -> usize {
        self.cumulative.partition_point(|c| *c < u).min(self.cumulative.len() - 1)
    }

    pub fn sample(&self) -> usize {
        self.rank_at(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_ranks_dominate_and_every_rank_is_reachable() {
        let zipf = Zipf::new(1000, 1.0);
        assert_eq!(zipf.rank_at(0.0), 0);
        assert_eq!(zipf.rank_at(1.0), 999);
        let draws: Vec<usize> = (0..20_000).map(|i| zipf.rank_at((i as f64 + 0.5) / 20_000.0)).collect();
        let top_ten = draws.iter().filter(|k| **k < 10).count() as f64 / draws.len() as f64;
        // H(10)/H(1000) = 2.929/7.485 ≈ 0.39 of the mass on the first ten of a thousand.
        assert!((0.37..0.41).contains(&top_ten), "{top_ten}");
        assert!(draws.windows(2).all(|w| w[0] <= w[1]), "monotone in u");
    }
}
