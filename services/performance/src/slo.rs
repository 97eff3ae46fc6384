//! SLO arithmetic, as Sloth and Pyrra do it: the SLI, the error budget counted in requests,
//! and burn rates over the multi-window, multi-burn-rate alerts of the Google SRE workbook
//! (chapter 5, "Alerting on SLOs", table 5-8), whose windows are given for 30 days and are
//! scaled here in proportion to the SLO's own window (a 7-day SLO pages on 14 min / 70 s).
//!
//! Pure functions over request counts: reading the counts is `crate::performance`'s work.

use pake_performance_server::types::{BurnRateAlertSeverity, BurnRateWindow};

/// Good and total requests over some window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub good: u64,
}

impl Counts {
    pub fn bad(&self) -> u64 {
        self.total.saturating_sub(self.good)
    }
}

const MINUTE_MS: i64 = 60_000;

/// The burn-rate windows of the workbook's table for a 30-day SLO, shortest first.
pub const WINDOWS: [(BurnRateWindow, i64); 7] = [
    (BurnRateWindow::X5m, 5 * MINUTE_MS),
    (BurnRateWindow::X30m, 30 * MINUTE_MS),
    (BurnRateWindow::X1h, 60 * MINUTE_MS),
    (BurnRateWindow::X2h, 120 * MINUTE_MS),
    (BurnRateWindow::X6h, 360 * MINUTE_MS),
    (BurnRateWindow::X1d, 1_440 * MINUTE_MS),
    (BurnRateWindow::X3d, 4_320 * MINUTE_MS),
];

/// One multi-window alert: it fires when both windows burn at or above the threshold.
#[derive(Debug, Clone, Copy)]
pub struct AlertRule {
    pub severity: BurnRateAlertSeverity,
    pub long: BurnRateWindow,
    pub short: BurnRateWindow,
    pub threshold: f64,
}

/// The workbook's recommended alerts: 2 % of the budget in 1 h and 5 % in 6 h page;
/// 10 % in 3 days (1 d / 2 h at 3) and the whole budget's pace (3 d / 6 h at 1) ticket.
pub const ALERTS: [AlertRule; 4] = [
    AlertRule {
        severity: BurnRateAlertSeverity::Page,
        long: BurnRateWindow::X1h,
        short: BurnRateWindow::X5m,
        threshold: 14.4,
    },
    AlertRule {
        severity: BurnRateAlertSeverity::Page,
        long: BurnRateWindow::X6h,
        short: BurnRateWindow::X30m,
        threshold: 6.0,
    },
    AlertRule {
        severity: BurnRateAlertSeverity::Ticket,
        long: BurnRateWindow::X1d,
        short: BurnRateWindow::X2h,
        threshold: 3.0,
    },
    AlertRule {
        severity: BurnRateAlertSeverity::Ticket,
        long: BurnRateWindow::X3d,
        short: BurnRateWindow::X6h,
        threshold: 1.0,
    },
];

/// A window's length for an SLO of `window_days` (the table's lengths are for 30 days).
pub fn scaled_ms(base_ms: i64, window_days: u64) -> i64 {
    (base_ms as i128 * window_days as i128 / 30) as i64
}

/// The lowest threshold among the alerts that use `window`.
pub fn threshold_of(window: BurnRateWindow) -> f64 {
    ALERTS
        .iter()
        .filter(|alert| alert.long == window || alert.short == window)
        .map(|alert| alert.threshold)
        .fold(f64::INFINITY, f64::min)
}

/// The error ratio the target allows (`1 − target/100`).
pub fn allowed_error_ratio(target: f64) -> f64 {
    // Subtract before dividing: 100 − 99.9 keeps more digits than 1 − 0.999.
    (100.0 - target) / 100.0
}

/// Observed error ratio over allowed; 0 without traffic. A target of 100 % allows no
/// error, so any error burns "infinitely": the largest finite number, which every
/// threshold is below.
pub fn burn_rate(counts: Counts, target: f64) -> f64 {
    if counts.total == 0 || counts.bad() == 0 {
        return 0.0;
    }
    let observed = counts.bad() as f64 / counts.total as f64;
    let allowed = allowed_error_ratio(target);
    if allowed <= 0.0 { f64::MAX } else { observed / allowed }
}

/// The SLI in percent; `None` without traffic.
pub fn sli(counts: Counts) -> Option<f64> {
    (counts.total > 0).then(|| counts.good as f64 / counts.total as f64 * 100.0)
}

/// The error budget over the window, in requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub total: f64,
    pub consumed: f64,
    pub remaining: f64,
    pub remaining_percent: f64,
}

/// `total = requests × (1 − target/100)`, `consumed = bad requests`, `remaining = total −
/// consumed` (negative when overspent, as Sloth reports it). Without traffic the whole
/// budget remains (100 %); with a budget of zero requests (a 100 % target), any bad
/// request overspends it by 100 % per request.
pub fn budget(counts: Counts, target: f64) -> Budget {
    let total = counts.total as f64 * allowed_error_ratio(target).max(0.0);
    let consumed = counts.bad() as f64;
    let remaining = total - consumed;
    let remaining_percent = if total > 0.0 {
        remaining / total * 100.0
    } else if consumed == 0.0 {
        100.0
    } else {
        -100.0 * consumed
    };
    Budget { total, consumed, remaining, remaining_percent }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workbook_example_report_adds_up() {
        // The contract's example: 1,000,000 requests at 99.9 %, 600 bad.
        let counts = Counts { total: 1_000_000, good: 999_400 };
        let b = budget(counts, 99.9);
        assert!((b.total - 1000.0).abs() < 1e-6);
        assert_eq!(b.consumed, 600.0);
        assert!((b.remaining - 400.0).abs() < 1e-6);
        assert!((b.remaining_percent - 40.0).abs() < 1e-6);
        assert!((sli(counts).unwrap() - 99.94).abs() < 1e-9);
        // 0.06 % errors against 0.1 % allowed.
        assert!((burn_rate(counts, 99.9) - 0.6).abs() < 1e-9);
    }

    #[test]
    fn an_overspent_budget_goes_negative() {
        let b = budget(Counts { total: 1000, good: 990 }, 99.9);
        assert!((b.remaining - (1.0 - 10.0)).abs() < 1e-9);
        assert!((b.remaining_percent - (-900.0)).abs() < 1e-6);
    }

    #[test]
    fn no_traffic_is_a_full_budget_and_no_burn_never_a_division_by_zero() {
        let none = Counts::default();
        assert_eq!(sli(none), None);
        assert_eq!(burn_rate(none, 99.9), 0.0);
        assert_eq!(budget(none, 99.9), Budget { total: 0.0, consumed: 0.0, remaining: 0.0, remaining_percent: 100.0 });
        let perfect = Counts { total: 10, good: 10 };
        assert_eq!(burn_rate(perfect, 100.0), 0.0);
        assert_eq!(budget(perfect, 100.0).remaining_percent, 100.0);
        assert!(burn_rate(Counts { total: 10, good: 9 }, 100.0).is_finite());
    }

    #[test]
    fn thresholds_per_window_are_the_lowest_alert_using_them() {
        let expected = [14.4, 6.0, 14.4, 3.0, 1.0, 3.0, 1.0];
        for ((window, _), threshold) in WINDOWS.iter().zip(expected) {
            assert_eq!(threshold_of(*window), threshold, "{window}");
        }
    }

    #[test]
    fn windows_scale_with_the_slo_window() {
        assert_eq!(scaled_ms(60 * MINUTE_MS, 30), 60 * MINUTE_MS);
        assert_eq!(scaled_ms(60 * MINUTE_MS, 7), 14 * MINUTE_MS);
        assert_eq!(scaled_ms(5 * MINUTE_MS, 7), 70_000);
        assert_eq!(scaled_ms(4_320 * MINUTE_MS, 90), 9 * 1_440 * MINUTE_MS);
    }
}
