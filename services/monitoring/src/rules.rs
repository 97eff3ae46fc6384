//! Alert rules: what a rule's expression means over the series store, and Prometheus's
//! alerting state machine over its results.
//!
//! A rule is the PromQL expression `AGG by (group_by) (metric{matchers}) OP threshold`,
//! with `rate` meaning `sum by (group_by) (rate(metric{matchers}[window]))`. The state
//! machine is `rules/alerting.go`'s `AlertingRule.Eval`: a label set for which the
//! comparison holds becomes pending with `active_at`; it fires once `t - active_at >= for`
//! (in the same evaluation when `for` is 0); a pending alert whose condition stops holding
//! is dropped; a firing one resolves and is kept for [`RESOLVED_RETENTION_MS`]; a later
//! return is a new alert. Alert labels are the series' (or group's) labels, then the rule's
//! labels (templates expanded), then `alertname`.

use crate::labels::{self, LabelSet, Matcher, MatcherSpec};
use crate::series::{Series, SeriesStore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// How long a resolved alert stays in a rule's active set (Prometheus's
/// `resolvedRetention`); it stays readable through the alert API for days after.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    #[default]
    None,
    Sum,
    Avg,
    Max,
    Min,
    Rate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Comparison {
    /// Go's float comparisons, as PromQL's filter applies them (NaN compares false except
    /// with `!=`).
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Gt => value > threshold,
            Comparison::Ge => value >= threshold,
            Comparison::Lt => value < threshold,
            Comparison::Le => value <= threshold,
            Comparison::Eq => value == threshold,
            Comparison::Ne => value != threshold,
        }
    }
}

fn default_rate_window() -> u64 {
    60
}

fn one() -> u64 {
    1
}

fn yes() -> bool {
    true
}

/// The contract's `AlertRuleSpec` with its defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub metric: String,
    #[serde(default)]
    pub matchers: Vec<MatcherSpec>,
    #[serde(default)]
    pub aggregation: Aggregation,
    #[serde(default = "default_rate_window")]
    pub rate_window_seconds: u64,
    #[serde(default)]
    pub group_by: Vec<String>,
    pub comparison: Comparison,
    pub threshold: f64,
    #[serde(default)]
    pub for_seconds: u64,
    #[serde(default = "one")]
    pub evaluation_interval_seconds: u64,
    pub severity: String,
    #[serde(default)]
    pub labels: LabelSet,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub receivers: Vec<Uuid>,
    #[serde(default)]
    pub auto_heal: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl RuleSpec {
    /// The checks the schema cannot make: label names, regexes.
    pub fn check(&self) -> Result<Vec<Matcher>, (String, String)> {
        for (i, m) in self.matchers.iter().enumerate() {
            Matcher::new(m).map_err(|message| (format!("/matchers/{i}/value"), message))?;
        }
        if let Some(bad) = self.labels.keys().find(|name| !labels::valid_label_name(name)) {
            return Err((
                format!("/labels/{bad}"),
                "label names match ^[a-zA-Z_][a-zA-Z0-9_]*$ and do not start with __".into(),
            ));
        }
        if let Some(bad) = self.group_by.iter().find(|name| name.starts_with("__")) {
            return Err(("/group_by".into(), format!("{bad} is a reserved label name")));
        }
        labels::compile(&self.matchers).map_err(|message| ("/matchers".into(), message))
    }
}

/// `rate()` over one series' points in `(start, end]`: `promql/functions.go`'s
/// `extrapolatedRate` for floats (counter resets, extrapolation to the window's edges by at
/// most half the average interval, never below a counter's zero point). `None` with fewer
/// than two points, as Prometheus returns nothing then.
pub fn extrapolated_rate(points: &[(i64, f64)], start: i64, end: i64, is_counter: bool, is_rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (first_t, first_v) = points[0];
    let (last_t, last_v) = points[points.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        for pair in points.windows(2) {
            if pair[1].1 < pair[0].1 {
                result += pair[0].1;
            }
        }
    }
    let mut duration_to_start = (first_t - start) as f64 / 1000.0;
    let mut duration_to_end = (end - last_t) as f64 / 1000.0;
    let sampled_interval = (last_t - first_t) as f64 / 1000.0;
    let average = sampled_interval / (points.len() - 1) as f64;
    let threshold = average * 1.1;
    if duration_to_start >= threshold {
        duration_to_start = average / 2.0;
    }
    if is_counter {
        let mut duration_to_zero = duration_to_start;
        if result > 0.0 && first_v >= 0.0 {
            duration_to_zero = sampled_interval * (first_v / result);
        }
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    if duration_to_end >= threshold {
        duration_to_end = average / 2.0;
    }
    let mut factor = 1.0;
    if sampled_interval != 0.0 {
        factor = (sampled_interval + duration_to_start + duration_to_end) / sampled_interval;
    }
    if is_rate {
        factor /= (end - start) as f64 / 1000.0;
    }
    Some(result * factor)
}

/// One element of the rule expression's result: labels (no metric name) and value, and the
/// labels templates see as `$labels`.
#[derive(Debug, Clone, PartialEq)]
pub struct Element {
    pub labels: LabelSet,
    pub value: f64,
}

/// The rule's expression at `t`: the elements for which the comparison holds.
pub fn evaluate(spec: &RuleSpec, matchers: &[Matcher], series: &SeriesStore, t: i64) -> Vec<Element> {
    let window = spec.rate_window_seconds as i64 * 1000;
    let value = |s: &Series| match spec.aggregation {
        Aggregation::Rate => extrapolated_rate(&s.range(t - window, t), t - window, t, true, true),
        _ => s.value_at(t),
    };
    if spec.aggregation == Aggregation::None {
        // Labels are copied only for the series whose comparison holds.
        return series.select(&spec.metric, matchers, |labels, s| {
            value(s)
                .filter(|v| spec.comparison.holds(*v, spec.threshold))
                .map(|value| Element { labels: labels.clone(), value })
        });
    }
    // Each series goes to its group by the values of the `by` labels (an absent or empty
    // one is absent from the group's labels too, as PromQL's `by` keeps them); a group's
    // labels are copied once, when it is first seen.
    let mut groups: Vec<LabelSet> = Vec::new();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut values: Vec<(u64, usize, f64)> = series.select(&spec.metric, matchers, |labels, s| {
        let v = value(s)?;
        let kept =
            || spec.group_by.iter().filter_map(|name| labels.get(name).filter(|v| !v.is_empty()).map(|v| (name, v)));
        let mut hasher = std::hash::DefaultHasher::new();
        for (name, value) in kept() {
            std::hash::Hash::hash(&(name, value), &mut hasher);
        }
        let candidates = by_hash.entry(std::hash::Hasher::finish(&hasher)).or_default();
        let same = |group: &LabelSet| group.len() == kept().count() && kept().all(|(n, v)| group.get(n) == Some(v));
        let index = match candidates.iter().find(|&&i| same(&groups[i])) {
            Some(&i) => i,
            None => {
                groups.push(kept().map(|(n, v)| (n.clone(), v.clone())).collect());
                candidates.push(groups.len() - 1);
                groups.len() - 1
            }
        };
        Some((s.created, index, v))
    });
    // Aggregated in the order Prometheus hands a query its series (creation order), so
    // that sums round as Prometheus's do.
    values.sort_by_key(|(created, _, _)| *created);
    let aggregation = spec.aggregation;
    let mut folded: Vec<(f64, usize)> = vec![(f64::NAN, 0); groups.len()];
    for (_, index, value) in values {
        let entry = &mut folded[index];
        entry.0 = match (aggregation, entry.1) {
            (_, 0) => value,
            (Aggregation::Sum | Aggregation::Rate | Aggregation::Avg, _) => entry.0 + value,
            // PromQL's max/min replace NaN by any number.
            (Aggregation::Max, _) if value > entry.0 || entry.0.is_nan() => value,
            (Aggregation::Min, _) if value < entry.0 || entry.0.is_nan() => value,
            _ => entry.0,
        };
        entry.1 += 1;
    }
    let mut results: Vec<Element> = groups
        .into_iter()
        .zip(folded)
        .map(|(labels, (value, n))| Element {
            labels,
            value: if aggregation == Aggregation::Avg { value / n as f64 } else { value },
        })
        .filter(|e| spec.comparison.holds(e.value, spec.threshold))
        .collect();
    results.sort_by(|a, b| a.labels.cmp(&b.labels));
    results
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

/// An alert as the state machine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    pub id: Uuid,
    pub labels: LabelSet,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub state: AlertState,
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub fingerprint: String,
}

/// What one evaluation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new alert, pending (and perhaps firing in the same evaluation: `Fired` follows).
    Pending(Uuid),
    Fired(Uuid),
    Resolved(Uuid),
    /// A pending alert whose condition stopped holding: forgotten.
    Dropped(Uuid),
}

/// The active alerts of one rule by fingerprint.
#[derive(Debug, Default, Clone)]
pub struct RuleAlerts {
    pub active: HashMap<String, ActiveAlert>,
}

impl RuleAlerts {
    /// Evaluates the rule at `t` over `series` and runs the state machine on the result:
    /// what the service's evaluation loop and the offline rule tests both call.
    pub fn evaluate(
        &mut self,
        spec: &RuleSpec,
        matchers: &[Matcher],
        series: &SeriesStore,
        t: i64,
    ) -> Result<Vec<Change>, String> {
        let results = evaluate(spec, matchers, series, t);
        self.step(spec, results, t)
    }

    /// One evaluation at `t` over the expression's `results`: `AlertingRule.Eval`.
    pub fn step(&mut self, spec: &RuleSpec, results: Vec<Element>, t: i64) -> Result<Vec<Change>, String> {
        let mut fresh: HashMap<String, ActiveAlert> = HashMap::new();
        for element in results {
            let mut template_labels = element.labels.clone();
            if spec.aggregation == Aggregation::None {
                template_labels.insert("__name__".into(), spec.metric.clone());
            }
            let expand = |text: &str| expand_template(text, &template_labels, element.value);
            let mut labels = element.labels.clone();
            for (name, value) in &spec.labels {
                // A label whose template expands to nothing is absent (Prometheus's
                // `labels.Builder.Set` deletes a label set to the empty string), so a
                // rule label may also remove a series label.
                match expand(value) {
                    expanded if expanded.is_empty() => labels.remove(name),
                    expanded => labels.insert(name.clone(), expanded),
                };
            }
            labels.insert("alertname".into(), spec.name.clone());
            let annotations = spec.annotations.iter().map(|(k, v)| (k.clone(), expand(v))).collect();
            let fingerprint = labels::fingerprint(&labels);
            if fresh.contains_key(&fingerprint) {
                return Err("vector contains metrics with the same labelset after applying alert labels".into());
            }
            fresh.insert(
                fingerprint.clone(),
                ActiveAlert {
                    id: Uuid::new_v4(),
                    labels,
                    annotations,
                    value: element.value,
                    state: AlertState::Pending,
                    active_at: t,
                    fired_at: None,
                    resolved_at: None,
                    fingerprint,
                },
            );
        }
        let mut changes = Vec::new();
        let holding: Vec<String> = fresh.keys().cloned().collect();
        for (fingerprint, alert) in fresh {
            match self.active.get_mut(&fingerprint) {
                Some(existing) if existing.state != AlertState::Resolved => {
                    existing.value = alert.value;
                    existing.annotations = alert.annotations;
                }
                _ => {
                    changes.push(Change::Pending(alert.id));
                    self.active.insert(fingerprint, alert);
                }
            }
        }
        let hold = spec.for_seconds as i64 * 1000;
        let mut forget = Vec::new();
        for (fingerprint, alert) in self.active.iter_mut() {
            if !holding.contains(fingerprint) {
                if alert.state == AlertState::Pending {
                    forget.push(fingerprint.clone());
                    changes.push(Change::Dropped(alert.id));
                    continue;
                }
                if alert.resolved_at.is_some_and(|r| t - r > RESOLVED_RETENTION_MS) {
                    forget.push(fingerprint.clone());
                }
                if alert.state != AlertState::Resolved {
                    alert.state = AlertState::Resolved;
                    alert.resolved_at = Some(t);
                    changes.push(Change::Resolved(alert.id));
                }
                continue;
            }
            if alert.state == AlertState::Pending && t - alert.active_at >= hold {
                alert.state = AlertState::Firing;
                alert.fired_at = Some(t);
                changes.push(Change::Fired(alert.id));
            }
        }
        for fingerprint in forget {
            self.active.remove(&fingerprint);
        }
        Ok(changes)
    }

    /// Resolves every pending or firing alert (the rule was disabled, deleted or replaced
    /// by one whose alerts these are not).
    pub fn resolve_all(&mut self, t: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        self.active.retain(|_, alert| match alert.state {
            AlertState::Pending => {
                changes.push(Change::Dropped(alert.id));
                false
            }
            AlertState::Firing => {
                alert.state = AlertState::Resolved;
                alert.resolved_at = Some(t);
                changes.push(Change::Resolved(alert.id));
                true
            }
            AlertState::Resolved => true,
        });
        changes
    }
}

/// The `ALERTS` and `ALERTS_FOR_STATE` series Prometheus writes for a pending or firing
/// alert at each evaluation (`AlertingRule.sample` and `forStateSample`): the rule's labels
/// as written (templates unexpanded, empty ones absent), the alert's labels over them,
/// then `__name__`, `alertname` and (for `ALERTS`) `alertstate`; values 1 and the alert's
/// `active_at` in whole seconds. `None` for a resolved alert, which has no such series.
pub fn alert_series(spec: &RuleSpec, alert: &ActiveAlert) -> Option<[(LabelSet, f64); 2]> {
    let state = match alert.state {
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => return None,
    };
    let mut labels: LabelSet =
        spec.labels.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.extend(alert.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert("alertname".into(), spec.name.clone());
    let mut for_state = labels.clone();
    for_state.insert("__name__".into(), "ALERTS_FOR_STATE".into());
    labels.insert("__name__".into(), "ALERTS".into());
    labels.insert("alertstate".into(), state.into());
    Some([(labels, 1.0), (for_state, alert.active_at.div_euclid(1000) as f64)])
}

/// Expands the templates Prometheus rules use most: `{{ $labels.name }}`,
/// `{{ $value }}` (and `{{ .Labels.name }}`, `{{ .Value }}`). Other actions are left as
/// written.
pub fn expand_template(text: &str, labels: &LabelSet, value: f64) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let action = &rest[open + 2..open + close];
        let inner = action.trim_start_matches('-').trim_end_matches('-').trim();
        let label = inner.strip_prefix("$labels.").or_else(|| inner.strip_prefix(".Labels."));
        match (label, inner) {
            (Some(name), _) => out.push_str(labels.get(name).map(String::as_str).unwrap_or("")),
            (None, "$value" | ".Value") => out.push_str(&go_float(value)),
            _ => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// A float as Go's `fmt` prints it with `%v` (what `{{ $value }}` shows in Prometheus):
/// `strconv.FormatFloat(v, 'g', -1, 64)`: the shortest digits, in exponent form when the
/// exponent is below -4 or at least 6 (so a million prints as `1e+06`).
pub fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("an exponent");
    let exponent: i32 = exponent.parse().expect("a numeric exponent");
    if (-4..6).contains(&exponent) {
        format!("{value}")
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(for_seconds: u64) -> RuleSpec {
        serde_json::from_value(serde_json::json!({
            "name": "down", "metric": "up", "comparison": "lt", "threshold": 1, "severity": "critical",
            "for_seconds": for_seconds, "labels": {"team": "{{ $labels.service }}-oncall"},
            "annotations": {"summary": "{{ $labels.instance_id }} is at {{ $value }}"}
        }))
        .unwrap()
    }

    fn element(instance: &str, value: f64) -> Element {
        Element {
            labels: [("instance_id".to_string(), instance.to_string()), ("service".into(), "search".into())].into(),
            value,
        }
    }

    #[test]
    fn the_state_machine_is_prometheus() {
        let rule = spec(10);
        let mut alerts = RuleAlerts::default();
        let changes = alerts.step(&rule, vec![element("a", 0.0)], 0).unwrap();
        assert!(matches!(changes[..], [Change::Pending(_)]));
        let alert = alerts.active.values().next().unwrap().clone();
        assert_eq!(alert.labels["team"], "search-oncall");
        assert_eq!(alert.labels["alertname"], "down");
        assert_eq!(alert.annotations["summary"], "a is at 0");
        // Held for 9 s: still pending; at 10 s it fires.
        assert!(alerts.step(&rule, vec![element("a", 0.0)], 9_000).unwrap().is_empty());
        assert_eq!(alerts.step(&rule, vec![element("a", 0.0)], 10_000).unwrap(), vec![Change::Fired(alert.id)]);
        // Cleared: resolved and kept; returns as a new alert.
        assert_eq!(alerts.step(&rule, vec![], 11_000).unwrap(), vec![Change::Resolved(alert.id)]);
        let again = alerts.step(&rule, vec![element("a", 0.0)], 12_000).unwrap();
        assert!(matches!(again[..], [Change::Pending(id)] if id != alert.id));
        // A pending alert that clears is dropped, and its `for` clock starts over.
        let pending_id = alerts.active.values().next().unwrap().id;
        assert_eq!(alerts.step(&rule, vec![], 13_000).unwrap(), vec![Change::Dropped(pending_id)]);
        assert!(alerts.active.is_empty());
    }

    #[test]
    fn for_zero_fires_in_the_same_evaluation() {
        let mut alerts = RuleAlerts::default();
        let changes = alerts.step(&spec(0), vec![element("a", 0.0)], 5).unwrap();
        assert!(matches!(changes[..], [Change::Pending(a), Change::Fired(b)] if a == b));
    }

    #[test]
    fn rate_extrapolates_as_prometheus() {
        // 0, 10, 20, 30 at 15 s intervals, window (0, 60 s] at t = 60 s: Prometheus gives
        // 0.5/s (increase 30 over 45 s, extrapolated by at most 7.5 s at the end and to the
        // counter's zero point at the start).
        let points = [(15_000, 10.0), (30_000, 20.0), (45_000, 30.0), (60_000, 40.0)];
        let rate = extrapolated_rate(&points, 0, 60_000, true, true).unwrap();
        // duration_to_start = 15 s >= 1.1 * 15? no, so 15; to zero = 45 * 10/30 = 15; end 0.
        assert!((rate - (30.0 * (60.0 / 45.0) / 60.0)).abs() < 1e-12, "{rate}");
        // A counter reset adds the value before it.
        let reset = [(10_000, 5.0), (20_000, 8.0), (30_000, 2.0)];
        let increase = extrapolated_rate(&reset, 0, 30_000, true, false).unwrap();
        assert!(increase > 5.0, "{increase}");
        assert_eq!(extrapolated_rate(&[(1, 1.0)], 0, 10, true, true), None);
    }

    #[test]
    fn values_print_as_go_does() {
        assert_eq!(go_float(0.0), "0");
        assert_eq!(go_float(7.4), "7.4");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(f64::NAN), "NaN");
    }
}
