//! Replica recommendations computed as the Kubernetes HorizontalPodAutoscaler computes them
//! (kubernetes/pkg/controller/podautoscaler/horizontal.go and replica_calculator.go, and
//! the algorithm section of the "Horizontal Pod Autoscaling" documentation):
//!
//! 1. A current count outside `min..max` is brought to the nearest bound, nothing else.
//! 2. Per target, `ceil(current × observed / target)`, unless the ratio is within the
//!    tolerance of 1 (0.1): then the current count. Requests per second are a per-replica
//!    average target (the observed value is the total over the current replicas), CPU
//!    utilisation a per-replica mean, p95 latency an object value.
//! 3. The largest proposal wins; with no metric at all, the current count stays.
//! 4. Stabilisation (`stabilizeRecommendationWithBehaviors`): a scale-down goes only as
//!    low as the highest recommendation of the scale-down window, a scale-up only as high
//!    as the lowest of the scale-up window.
//! 5. Step limits (`convertDesiredReplicasWithBehaviorRate` with one `Pods` policy per
//!    direction), then `min..max`.
//!
//! Pure: the observed load and the history of recommendations are passed in.

/// The HPA's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub min_replicas: u64,
    pub max_replicas: u64,
    pub target_cpu_utilization: Option<f64>,
    pub target_rps_per_replica: Option<f64>,
    pub target_p95_latency_ms: Option<f64>,
    pub scale_up_stabilization_ms: i64,
    pub scale_down_stabilization_ms: i64,
    pub max_scale_up_step: u64,
    pub max_scale_down_step: u64,
}

/// The load over the last minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// Requests per second over all replicas.
    pub rps: f64,
    pub p95_ms: Option<f64>,
    /// Mean CPU utilisation per replica, as a fraction of its request.
    pub cpu_utilization: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub desired: u64,
    /// The unstabilised recommendation, to remember for later stabilisation (`None` when
    /// step 1 decided and nothing is recorded, as in the HPA).
    pub raw: Option<u64>,
    /// Whether a stabilisation window held a change back.
    pub stabilized: bool,
    pub reason: String,
}

/// `ceil(current × ratio)`, or `current` within the tolerance.
pub fn replicas_for_ratio(current: u64, ratio: f64) -> u64 {
    if (ratio - 1.0).abs() <= TOLERANCE { current } else { (current as f64 * ratio).ceil() as u64 }
}

/// The recommendation at `now_ms`, given the unstabilised recommendations made before
/// (`history`: time and replicas).
pub fn recommend(
    policy: &Policy,
    current: u64,
    observed: &Observed,
    history: &[(i64, u64)],
    now_ms: i64,
) -> Recommendation {
    if current == 0 {
        return Recommendation {
            desired: policy.min_replicas,
            raw: None,
            stabilized: false,
            reason: format!("no passing instances in the registry; the minimum of {} applies", policy.min_replicas),
        };
    }
    if current > policy.max_replicas {
        return Recommendation {
            desired: policy.max_replicas,
            raw: None,
            stabilized: false,
            reason: format!("{current} replicas are above the maximum of {}", policy.max_replicas),
        };
    }
    if current < policy.min_replicas {
        return Recommendation {
            desired: policy.min_replicas,
            raw: None,
            stabilized: false,
            reason: format!("{current} replicas are below the minimum of {}", policy.min_replicas),
        };
    }

    // Step 2 and 3: one proposal per target with a metric; the largest wins.
    let mut proposals: Vec<(u64, String)> = Vec::new();
    if let (Some(target), Some(cpu)) = (policy.target_cpu_utilization, observed.cpu_utilization) {
        let replicas = replicas_for_ratio(current, cpu / target);
        proposals.push((replicas, format!("CPU utilisation {cpu:.2} against {target:.2} needs {replicas} replicas")));
    }
    if let Some(target) = policy.target_rps_per_replica {
        let per_replica = observed.rps / current as f64;
        let replicas = replicas_for_ratio(current, per_replica / target);
        proposals.push((
            replicas,
            format!("observed {:.1} rps against {target} rps per replica needs {replicas} replicas", observed.rps),
        ));
    }
    if let (Some(target), Some(p95)) = (policy.target_p95_latency_ms, observed.p95_ms) {
        let replicas = replicas_for_ratio(current, p95 / target);
        proposals.push((replicas, format!("p95 latency {p95:.1} ms against {target} ms needs {replicas} replicas")));
    }
    let (raw, mut reason) = proposals
        .into_iter()
        .reduce(|best, next| if next.0 > best.0 { next } else { best })
        .unwrap_or_else(|| (current, "no metric of the policy's targets has data; the count stays".to_string()));

    // Step 4: stabilisation over the history.
    let up_cutoff = now_ms - policy.scale_up_stabilization_ms;
    let down_cutoff = now_ms - policy.scale_down_stabilization_ms;
    let (mut up_limit, mut down_limit) = (raw, raw);
    for (at, replicas) in history {
        if *at > up_cutoff {
            up_limit = up_limit.min(*replicas);
        }
        if *at > down_cutoff {
            down_limit = down_limit.max(*replicas);
        }
    }
    let stabilized_value = current.max(up_limit).min(down_limit);
    let stabilized = stabilized_value != raw;
    if stabilized {
        reason.push_str(&format!(
            "; held at {stabilized_value} by the scale-{} stabilisation window",
            if raw < current { "down" } else { "up" }
        ));
    }

    // Step 5: step limits, then the bounds.
    let mut desired = stabilized_value;
    if desired > current {
        let limit = policy.max_replicas.min(current + policy.max_scale_up_step);
        if desired > limit {
            desired = limit;
            reason.push_str(&if limit == policy.max_replicas {
                format!("; limited to the maximum of {limit}")
            } else {
                format!("; limited by the scale-up step of {}", policy.max_scale_up_step)
            });
        }
    } else if desired < current {
        let limit = policy.min_replicas.max(current.saturating_sub(policy.max_scale_down_step));
        if desired < limit {
            desired = limit;
            reason.push_str(&if limit == policy.min_replicas {
                format!("; limited to the minimum of {limit}")
            } else {
                format!("; limited by the scale-down step of {}", policy.max_scale_down_step)
            });
        }
    }
    let desired = desired.clamp(policy.min_replicas, policy.max_replicas);
    Recommendation { desired, raw: Some(raw), stabilized, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_replicas: 1,
            max_replicas: 100,
            target_cpu_utilization: None,
            target_rps_per_replica: None,
            target_p95_latency_ms: None,
            scale_up_stabilization_ms: 0,
            scale_down_stabilization_ms: 0,
            max_scale_up_step: 1000,
            max_scale_down_step: 1000,
        }
    }

    fn cpu(utilization: f64) -> Observed {
        Observed { rps: 0.0, p95_ms: None, cpu_utilization: Some(utilization) }
    }

    /// "Horizontal Pod Autoscaling", algorithm details: "if the current metric value is
    /// 200m, and the desired value is 100m, the number of replicas will be doubled … If
    /// the current value is instead 50m, you'll halve the number of replicas".
    #[test]
    fn doc_example_doubling_and_halving() {
        let p = Policy { target_cpu_utilization: Some(0.100), ..policy() };
        assert_eq!(recommend(&p, 4, &cpu(0.200), &[], 0).desired, 8);
        assert_eq!(recommend(&p, 4, &cpu(0.050), &[], 0).desired, 2);
    }

    /// "The control plane skips any scaling action if the ratio is sufficiently close to
    /// 1.0 (within a configurable tolerance, 0.1 by default)."
    #[test]
    fn doc_example_tolerance() {
        let p = Policy { target_cpu_utilization: Some(0.5), ..policy() };
        assert_eq!(recommend(&p, 10, &cpu(0.54), &[], 0).desired, 10);
        assert_eq!(recommend(&p, 10, &cpu(0.46), &[], 0).desired, 10);
        // Just outside the tolerance, ceil(10 × 1.12) = 12.
        assert_eq!(recommend(&p, 10, &cpu(0.56), &[], 0).desired, 12);
    }

    /// The HPA walkthrough (php-apache): one replica at 305 % CPU against a 50 % target
    /// becomes ceil(1 × 305 / 50) = 7 replicas.
    #[test]
    fn walkthrough_php_apache_scales_to_seven() {
        let p = Policy { target_cpu_utilization: Some(0.50), max_replicas: 10, ..policy() };
        assert_eq!(recommend(&p, 1, &cpu(3.05), &[], 0).desired, 7);
    }

    /// The v1.33 configurable-tolerance post: 50 replicas at 90 % against 75 % → 60.
    #[test]
    fn configurable_tolerance_post_fifty_to_sixty() {
        let p = Policy { target_cpu_utilization: Some(0.75), ..policy() };
        assert_eq!(recommend(&p, 50, &cpu(0.90), &[], 0).desired, 60);
    }

    /// "If multiple metrics are specified … the HorizontalPodAutoscaler … chooses the
    /// largest" desired count.
    #[test]
    fn the_largest_target_wins() {
        let p = Policy { target_cpu_utilization: Some(0.5), target_rps_per_replica: Some(100.0), ..policy() };
        // CPU asks for ceil(4 × 0.75 / 0.5) = 6, requests for ceil(980 / 100) = 10.
        let observed = Observed { rps: 980.0, p95_ms: None, cpu_utilization: Some(0.75) };
        let r = recommend(&p, 4, &observed, &[], 0);
        assert_eq!(r.desired, 10);
        assert!(r.reason.contains("rps"), "{}", r.reason);
    }

    /// The contract's example: 980 rps against 150 per replica on 4 replicas needs 7, and
    /// a scale-up step of 4 allows it.
    #[test]
    fn contract_example_seven_replicas() {
        let p = Policy {
            target_rps_per_replica: Some(150.0),
            max_scale_up_step: 4,
            min_replicas: 2,
            max_replicas: 20,
            ..policy()
        };
        let observed = Observed { rps: 980.0, p95_ms: Some(352.1), cpu_utilization: Some(0.81) };
        let r = recommend(&p, 4, &observed, &[], 0);
        assert_eq!((r.desired, r.stabilized), (7, false));
    }

    /// "Stabilization window … When the metrics indicate that the target should be scaled
    /// down the algorithm looks into previously computed desired states, and uses the
    /// highest value from the specified interval."
    #[test]
    fn scale_down_takes_the_highest_recommendation_of_the_window() {
        let p = Policy { target_cpu_utilization: Some(0.5), scale_down_stabilization_ms: 300_000, ..policy() };
        let now = 1_000_000;
        let history = [(now - 400_000, 9), (now - 200_000, 8), (now - 100_000, 6)];
        let r = recommend(&p, 8, &cpu(0.25), &history, now);
        // Raw ceil(8 × 0.5) = 4; the window (last 300 s) holds 8 and 6: the highest, 8.
        assert_eq!(r.raw, Some(4));
        assert_eq!(r.desired, 8);
        assert!(r.stabilized);
        // Once the window has moved past the high recommendations, the scale-down goes on.
        let history = [(now - 100_000, 6), (now, 6)];
        let r = recommend(&p, 8, &cpu(0.25), &history, now + 250_000);
        assert_eq!((r.desired, r.stabilized), (6, true));
        let r = recommend(&p, 8, &cpu(0.25), &history, now + 400_000);
        assert_eq!((r.desired, r.stabilized), (4, false));
    }

    #[test]
    fn scale_up_takes_the_lowest_recommendation_of_its_window() {
        let p = Policy { target_cpu_utilization: Some(0.5), scale_up_stabilization_ms: 60_000, ..policy() };
        let now = 500_000;
        let r = recommend(&p, 4, &cpu(1.0), &[(now - 30_000, 5)], now);
        assert_eq!((r.raw, r.desired, r.stabilized), (Some(8), 5, true));
    }

    #[test]
    fn steps_and_bounds_limit_the_change() {
        let p = Policy {
            target_cpu_utilization: Some(0.5),
            max_scale_up_step: 4,
            max_scale_down_step: 1,
            max_replicas: 20,
            min_replicas: 2,
            ..policy()
        };
        assert_eq!(recommend(&p, 4, &cpu(2.0), &[], 0).desired, 8);
        assert_eq!(recommend(&p, 4, &cpu(5.0), &[], 0).desired, 8);
        assert_eq!(recommend(&p, 18, &cpu(5.0), &[], 0).desired, 20);
        assert_eq!(recommend(&p, 10, &cpu(0.05), &[], 0).desired, 9);
        assert_eq!(recommend(&p, 3, &cpu(0.05), &[], 0).desired, 2);
        // Outside the bounds, the nearest bound, and nothing recorded.
        let above = recommend(&p, 25, &cpu(0.5), &[], 0);
        assert_eq!((above.desired, above.raw), (20, None));
        assert_eq!(recommend(&p, 1, &cpu(0.5), &[], 0).desired, 2);
    }

    #[test]
    fn without_instances_or_metrics_nothing_is_invented() {
        let p = Policy { target_p95_latency_ms: Some(400.0), min_replicas: 3, ..policy() };
        assert_eq!(recommend(&p, 0, &cpu(9.0), &[], 0).desired, 3);
        let quiet = Observed { rps: 0.0, p95_ms: None, cpu_utilization: None };
        let r = recommend(&p, 5, &quiet, &[], 0);
        assert_eq!((r.desired, r.stabilized), (5, false));
    }
}
