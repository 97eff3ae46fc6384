//! Offline rule tests in `promtool test rules`' unit-test format, run by our own engine.
//!
//! A test file names rule files (`rule_files`, relative to the test file, `*` and `?`
//! globs in the last path component), an `evaluation_interval` (1m by default) and
//! `tests`: groups of `input_series` in the series notation (`metric{label="value"}` with
//! values such as `1 2 3`, `0+10x5`, `5-1x3`, `7x4`, `_`, `_x3`, `stale`, sampled every
//! `interval`, which defaults to the evaluation interval) with `alert_rule_test` cases
//! (`eval_time`, `alertname`, `exp_alerts` with `exp_labels` and `exp_annotations`: the
//! firing alerts at that time) and `promql_expr_test` cases (`expr`, `eval_time`,
//! `exp_samples`). Each rule file is a YAML list of the contract's `AlertRuleSpec`s,
//! checked against the contract's schema as the API checks them.
//!
//! The evaluation is `cmd/promtool/unittest.go`'s: every rule is evaluated at 0,
//! `evaluation_interval`, 2 × `evaluation_interval`, … up to the latest `eval_time` (a
//! rule's own `evaluation_interval_seconds` is not used, as promtool ignores group
//! intervals), each with [`RuleAlerts::evaluate`] — the code the service's evaluation loop
//! runs — and its pending and firing alerts are written back as the `ALERTS` and
//! `ALERTS_FOR_STATE` series (stale once an alert is gone), so that a
//! `promql_expr_test` can check pending alerts and their `for` clocks. An alert case is
//! checked against the last evaluation at or before its `eval_time`. What is printed, and
//! on which stream, is what promtool prints, so a file passes or fails both tools alike.
//!
//! What it does not do: PromQL beyond a vector selector in `promql_expr_test`
//! (`name{label=~"regex"}`), `group_eval_order` (our rule files have no groups),
//! `external_labels` and `external_url` (our templates do not read them).

use crate::labels::{self, LabelSet, MatchOp, Matcher, MatcherSpec};
use crate::rules::{self, AlertState, RuleAlerts, RuleSpec};
use crate::series::{Limits, Point, SeriesKey, SeriesStore};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Runs the test files as `promtool test rules FILE…` does: progress and `SUCCESS` on
/// `out`, `FAILED:` and each difference on `err`. True when every file passed (exit 0),
/// false otherwise (exit 1).
pub fn run(files: &[PathBuf], out: &mut dyn Write, err: &mut dyn Write) -> bool {
    let mut passed = true;
    for file in files {
        // Write errors on the two streams are not the tests' outcome; they are ignored
        // as promtool ignores them.
        let _ = writeln!(out, "Unit Testing:  {}", file.display());
        let errors = test_file(file, err);
        if errors.is_empty() {
            let _ = writeln!(out, "  SUCCESS");
        } else {
            let _ = writeln!(err, "  FAILED:");
            for error in errors {
                let _ = writeln!(err, "{error}");
                let _ = writeln!(out);
            }
            passed = false;
        }
        let _ = writeln!(out);
    }
    passed
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<Duration>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    interval: Option<Duration>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTestCase>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTestCase>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    #[serde(deserialize_with = "scalar_text")]
    series: String,
    #[serde(deserialize_with = "scalar_text")]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTestCase {
    eval_time: Duration,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedAlert {
    #[serde(default, deserialize_with = "text_map")]
    exp_labels: LabelSet,
    #[serde(default, deserialize_with = "text_map")]
    exp_annotations: LabelSet,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTestCase {
    #[serde(deserialize_with = "scalar_text")]
    expr: String,
    eval_time: Duration,
    #[serde(default)]
    exp_samples: Vec<ExpectedSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedSample {
    #[serde(deserialize_with = "scalar_text")]
    labels: String,
    value: f64,
}

/// A duration in Prometheus's notation (`1h30m`, `90s`, `1d`, `500ms`), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Duration(i64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = scalar_text(deserializer)?;
        parse_duration(&text).map(Duration).map_err(serde::de::Error::custom)
    }
}

/// A YAML scalar as text, as Go's YAML reader gives a string field a number or a bool.
fn scalar_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match serde_yaml::Value::deserialize(deserializer)? {
        serde_yaml::Value::String(text) => Ok(text),
        serde_yaml::Value::Number(number) => Ok(number.to_string()),
        serde_yaml::Value::Bool(value) => Ok(value.to_string()),
        serde_yaml::Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!("expected a string, got {other:?}"))),
    }
}

fn text_map<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<LabelSet, D::Error> {
    let map: Option<BTreeMap<String, serde_yaml::Value>> = Option::deserialize(deserializer)?;
    let mut out = LabelSet::new();
    for (name, value) in map.unwrap_or_default() {
        let text = match value {
            serde_yaml::Value::String(text) => text,
            serde_yaml::Value::Number(number) => number.to_string(),
            serde_yaml::Value::Bool(value) => value.to_string(),
            serde_yaml::Value::Null => String::new(),
            other => return Err(serde::de::Error::custom(format!("{name}: expected a string, got {other:?}"))),
        };
        out.insert(name, text);
    }
    Ok(out)
}

/// `model.ParseDuration`: units y, w, d, h, m, s, ms, each at most once and in that order.
fn parse_duration(text: &str) -> Result<i64, String> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("ms", 1),
        ("m", 60_000),
        ("s", 1000),
    ];
    // The order units must come in (ms after s, although it is matched before m).
    const RANK: [usize; 7] = [0, 1, 2, 3, 6, 4, 5];
    let bad = || format!("not a valid duration string: {text:?}");
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err("empty duration string".into());
    }
    let mut rest = text;
    let mut total: i64 = 0;
    let mut last_rank = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (i, (unit, ms)) = UNITS.iter().enumerate().find(|(_, (unit, _))| rest.starts_with(unit)).ok_or_else(bad)?;
        if last_rank.is_some_and(|r| r >= RANK[i]) {
            return Err(bad());
        }
        last_rank = Some(RANK[i]);
        rest = &rest[unit.len()..];
        total = number.checked_mul(*ms).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    Ok(total)
}

/// `model.Duration.String`: `1h30m`, `90d`, `0s`; years and weeks only when exact.
fn model_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut rest = ms;
    let mut out = String::new();
    let units: [(&str, i64, bool); 7] = [
        ("y", 365 * 24 * 3_600_000, true),
        ("w", 7 * 24 * 3_600_000, true),
        ("d", 24 * 3_600_000, false),
        ("h", 3_600_000, false),
        ("m", 60_000, false),
        ("s", 1000, false),
        ("ms", 1, false),
    ];
    for (unit, size, exact) in units {
        if exact && rest % size != 0 {
            continue;
        }
        let n = rest / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            rest -= n * size;
        }
    }
    out
}

/// Go's `time.Duration.String` for whole milliseconds: `1h0m0s`, `2m30s`, `1.5s`, `100ms`.
fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    if ms < 1000 {
        return format!("{sign}{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, ms / 60_000 % 60);
    let mut seconds = format!("{}", ms % 60_000 / 1000);
    if !ms.is_multiple_of(1000) {
        seconds = format!("{seconds}.{:03}", ms % 1000).trim_end_matches('0').to_string();
    }
    match (h, m) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

/// One value of an input series.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SeriesValue {
    Omitted,
    Stale,
    Value(f64),
}

/// The expanding notation of `values`: `a`, `a+bxn` and `a-bxn` (n + 1 values from `a` in
/// steps of `b`), `axn` (n + 1 times `a`), `_` (no sample), `_xn` (n missing samples),
/// `stale` (a stale marker), `stalexn`.
fn parse_values(text: &str) -> Result<Vec<SeriesValue>, String> {
    let mut values = Vec::new();
    for token in text.split_whitespace() {
        let (head, times) = match token.rsplit_once('x') {
            Some((head, count)) => {
                let n: u64 = count.parse().map_err(|_| {
                    format!("invalid repetition in series values: {token:?} (expected a count after x)")
                })?;
                (head, Some(n))
            }
            None => (token, None),
        };
        if head == "_" {
            let n = times.unwrap_or(1);
            values.extend((0..n).map(|_| SeriesValue::Omitted));
            continue;
        }
        if head == "stale" {
            let n = times.map(|n| n + 1).unwrap_or(1);
            values.extend((0..n).map(|_| SeriesValue::Stale));
            continue;
        }
        // `a+b` or `a-b`: the sign that splits them is neither the leading one nor an
        // exponent's.
        let bytes = head.as_bytes();
        let split = (1..bytes.len())
            .rev()
            .find(|&i| (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E'));
        let (start, step) = match split {
            Some(i) if times.is_some() => (number(&head[..i], token)?, number(&head[i..], token)?),
            Some(_) => return Err(format!("unexpected {token:?} in series values: a step needs a repetition (a+bxn)")),
            None => (number(head, token)?, 0.0),
        };
        match times {
            None => values.push(SeriesValue::Value(start)),
            Some(n) => {
                let mut value = start;
                for _ in 0..=n {
                    values.push(SeriesValue::Value(value));
                    value += step;
                }
            }
        }
    }
    Ok(values)
}

/// A number as PromQL reads one (decimal, exponent, `Inf`, `NaN`; no hexadecimal).
fn number(text: &str, token: &str) -> Result<f64, String> {
    let unsigned = text.trim_start_matches(['+', '-']);
    let named = ["inf", "nan"].contains(&unsigned.to_ascii_lowercase().as_str());
    let numeric = !unsigned.is_empty()
        && unsigned.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && unsigned.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if !(named || numeric) || text.len() - unsigned.len() > 1 {
        return Err(format!("unexpected {token:?} in series values: expected a number or \"stale\""));
    }
    text.parse::<f64>().map_err(|_| format!("unexpected {token:?} in series values: expected a number or \"stale\""))
}

/// A metric or selector: `name`, `name{…}` or `{…}`, each matcher `label op "value"`.
struct Selector {
    name: Option<String>,
    matchers: Vec<MatcherSpec>,
}

fn parse_selector(text: &str) -> Result<Selector, String> {
    let text = text.trim();
    let name_end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
    let name = &text[..name_end];
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("{text:?} is not a metric name"));
    }
    let mut rest = text[name_end..].trim_start();
    let mut selector = Selector { name: (!name.is_empty()).then(|| name.to_string()), matchers: Vec::new() };
    if rest.is_empty() {
        return if name.is_empty() { Err("an empty selector".into()) } else { Ok(selector) };
    }
    rest = rest.strip_prefix('{').ok_or_else(|| format!("unexpected {rest:?} after the metric name"))?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            if !after.trim().is_empty() {
                return Err(format!("unexpected {:?} after the selector", after.trim()));
            }
            break;
        }
        let label_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let label = &rest[..label_end];
        if label.is_empty() {
            return Err(format!("expected a label name at {rest:?}"));
        }
        rest = rest[label_end..].trim_start();
        let (op, skip) = if rest.starts_with("=~") {
            (MatchOp::MatchRegex, 2)
        } else if rest.starts_with("!~") {
            (MatchOp::NotMatchRegex, 2)
        } else if rest.starts_with("!=") {
            (MatchOp::NotEqual, 2)
        } else if rest.starts_with('=') {
            (MatchOp::Equal, 1)
        } else {
            return Err(format!("expected a matcher operator after {label:?}"));
        };
        rest = rest[skip..].trim_start();
        let (value, after) = quoted(rest)?;
        rest = after.trim_start();
        selector.matchers.push(MatcherSpec { label: label.to_string(), op, value });
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} at {rest:?}"));
        }
    }
    if let Some(i) = selector.matchers.iter().position(|m| m.label == "__name__") {
        let matcher = selector.matchers.remove(i);
        if matcher.op != MatchOp::Equal || selector.name.is_some() {
            return Err("__name__ may only be given once, with =".into());
        }
        selector.name = Some(matcher.value);
    }
    if selector.name.is_none() {
        return Err("a selector names its metric".into());
    }
    Ok(selector)
}

/// A quoted string (`"…"` or `'…'` with Go's escapes, or a raw `` `…` ``) and what follows.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let quote = text.chars().next().filter(|c| matches!(c, '"' | '\'' | '`')).ok_or("expected a quoted value")?;
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Ok((value, &text[i + 1..]));
        }
        if c != '\\' || quote == '`' {
            value.push(c);
            continue;
        }
        let (_, escaped) = chars.next().ok_or("a backslash ends the value")?;
        let hex = |chars: &mut dyn Iterator<Item = (usize, char)>, n: usize| -> Result<char, String> {
            let digits: String = chars.take(n).map(|(_, c)| c).collect();
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("an invalid escape \\{escaped}{digits}"))
        };
        value.push(match escaped {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'v' => '\x0b',
            'x' => hex(&mut chars, 2)?,
            'u' => hex(&mut chars, 4)?,
            'U' => hex(&mut chars, 8)?,
            '\\' | '"' | '\'' => escaped,
            other => return Err(format!("an unknown escape \\{other}")),
        });
    }
    Err("an unterminated quoted value".into())
}

/// A series description or an expected sample's labels: the metric's labels with
/// `__name__`; empty values are absent, as in Prometheus.
fn parse_metric(text: &str) -> Result<LabelSet, String> {
    let selector = parse_selector(text)?;
    let mut labels = LabelSet::new();
    for matcher in selector.matchers {
        if matcher.op != MatchOp::Equal {
            return Err(format!("{text:?}: a series has labels (name=\"value\"), not matchers"));
        }
        if !matcher.value.is_empty() {
            labels.insert(matcher.label, matcher.value);
        }
    }
    labels.insert("__name__".into(), selector.name.unwrap_or_default());
    Ok(labels)
}

/// Go's `strconv.Quote`.
fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `labels.Labels.String`: `{a="1", b="2"}`.
fn labels_text(labels: &LabelSet) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// `strconv.FormatFloat(v, 'E', -1, 64)`: `1E+00`, `2.5E-01`.
fn go_float_e(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let text = format!("{value:E}");
    let (mantissa, exponent) = text.split_once('E').expect("an exponent");
    let exponent: i32 = exponent.parse().expect("a numeric exponent");
    format!("{mantissa}E{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs())
}

/// Go's `indentLines`: every line but the first gets `indent`.
fn indent_lines(text: &str, indent: &str) -> String {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| if i > 0 { format!("{indent}{l}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// promtool's `labelsAndAnnotations.String`.
fn alerts_text(alerts: &[(LabelSet, LabelSet)]) -> String {
    if alerts.is_empty() {
        return "[]".into();
    }
    let items: Vec<String> = alerts
        .iter()
        .enumerate()
        .map(|(i, (labels, annotations))| {
            let one = format!("\nLabels:{}\nAnnotations:{}", labels_text(labels), labels_text(annotations));
            format!("{i}:{}", indent_lines(&one, "  "))
        })
        .collect();
    format!("[\n{}\n]", items.join(",\n"))
}

fn samples_text(samples: &[(LabelSet, f64)]) -> String {
    if samples.is_empty() {
        return "nil".into();
    }
    samples
        .iter()
        .map(|(labels, value)| format!("{} {}", labels_text(labels), go_float_e(*value)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rule from a rule file, ready to evaluate.
struct LoadedRule {
    spec: RuleSpec,
    matchers: Vec<Matcher>,
}

/// Reads one rule file: a YAML list of `AlertRuleSpec`s, each checked against the
/// contract's schema and then as the API checks it.
fn load_rule_file(path: &Path, schema: &jsonschema::Validator) -> Result<Vec<LoadedRule>, Vec<String>> {
    let at = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{at}: {e}")])?;
    let documents: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| vec![format!("{at}: {e}")])?;
    let serde_json::Value::Array(items) = documents else {
        return Err(vec![format!("{at}: a rule file is a YAML list of alert rules (AlertRuleSpec)")]);
    };
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let name = item.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let mut problems: Vec<String> = schema
            .iter_errors(&item)
            .take(10)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                format!("{}: {e}", if pointer.is_empty() { "/".into() } else { pointer })
            })
            .collect();
        if problems.is_empty() {
            match serde_json::from_value::<RuleSpec>(item) {
                Ok(spec) => match spec.check() {
                    Ok(matchers) => rules.push(LoadedRule { spec, matchers }),
                    Err((field, message)) => problems.push(format!("{field}: {message}")),
                },
                Err(error) => problems.push(error.to_string()),
            }
        }
        errors.extend(problems.into_iter().map(|p| format!("{at}: rule {i} ({name:?}): {p}")));
    }
    if errors.is_empty() { Ok(rules) } else { Err(errors) }
}

/// The rule files a pattern names: relative to the test file's directory, `*` and `?`
/// allowed in the last component.
fn resolve(pattern: &str, base: &Path, err: &mut dyn Write) -> Vec<PathBuf> {
    let path = if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { base.join(pattern) };
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let found: Vec<PathBuf> = if name.contains(['*', '?']) {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut matches: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| glob_matches(&name, &entry.file_name().to_string_lossy()))
            .map(|entry| entry.path())
            .collect();
        matches.sort();
        matches
    } else if path.exists() {
        vec![path.clone()]
    } else {
        Vec::new()
    };
    if found.is_empty() {
        let _ = writeln!(err, "  WARNING: no file match pattern {}", path.display());
    }
    found
}

fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer wildcard matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// The errors of one test file (none when it passed).
fn test_file(path: &Path, err: &mut dyn Write) -> Vec<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return vec![error.to_string()],
    };
    let file: TestFile = match serde_yaml::from_str(&text) {
        Ok(file) => file,
        Err(error) => return vec![error.to_string()],
    };
    if !file.group_eval_order.is_empty() {
        return vec!["group_eval_order: PAKE rule files have no groups; rules are evaluated in file order".into()];
    }
    let schema_text = pake_monitoring_server::CREATE_ALERT_RULE.body_schema.expect("createAlertRule has a body");
    let schema = serde_json::from_str(schema_text)
        .map_err(|e| e.to_string())
        .and_then(|schema| jsonschema::draft202012::options().build(&schema).map_err(|e| e.to_string()));
    let schema = match schema {
        Ok(schema) => schema,
        Err(error) => return vec![format!("the contract's AlertRuleSpec schema: {error}")],
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for pattern in &file.rule_files {
        for rule_file in resolve(pattern, base, err) {
            match load_rule_file(&rule_file, &schema) {
                Ok(loaded) => rules.extend(loaded),
                Err(found) => errors.extend(found),
            }
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    let evaluation_interval = file.evaluation_interval.map(|d| d.0).filter(|&d| d > 0).unwrap_or(60_000);
    for group in &file.tests {
        let rules = rules.iter().map(|r| LoadedRule { spec: r.spec.clone(), matchers: r.matchers.clone() }).collect();
        errors.extend(test_group(group, evaluation_interval, rules));
    }
    errors
}

/// Rules evaluated over input series as promtool evaluates them: each [`Evaluation::at`]
/// runs every rule once with [`RuleAlerts::evaluate`] and writes its pending and firing
/// alerts back as the `ALERTS` and `ALERTS_FOR_STATE` series. The offline tests judge
/// through it; so can a test that compares our engine with another.
pub struct Evaluation {
    store: SeriesStore,
    rules: Vec<LoadedRule>,
    /// Per rule: its alerts, and the `ALERTS…` series it wrote at its last evaluation.
    states: Vec<(RuleAlerts, BTreeSet<SeriesKey>)>,
}

impl Evaluation {
    /// `rules` over `input`: (series description, values in the expanding notation), the
    /// n-th value at n × `interval_ms`.
    pub fn new(rules: Vec<RuleSpec>, input: &[(String, String)], interval_ms: i64) -> Result<Evaluation, String> {
        let rules = rules
            .into_iter()
            .map(|spec| {
                let matchers =
                    spec.check().map_err(|(field, message)| format!("rule {}: {field}: {message}", spec.name))?;
                Ok(LoadedRule { spec, matchers })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Evaluation::loaded(rules, input, interval_ms)
    }

    fn loaded(rules: Vec<LoadedRule>, input: &[(String, String)], interval_ms: i64) -> Result<Evaluation, String> {
        let store = SeriesStore::new(Limits {
            max_series: usize::MAX,
            max_samples_per_series: usize::MAX,
            retention_ms: i64::MAX,
        });
        for (i, (series, values)) in input.iter().enumerate() {
            let parsed = parse_metric(series).and_then(|labels| Ok((labels, parse_values(values)?)));
            let (mut labels, values) = parsed.map_err(|error| format!("input_series {i} ({series}): {error}"))?;
            let name = labels.remove("__name__").unwrap_or_default();
            for (step, value) in values.into_iter().enumerate() {
                let t = step as i64 * interval_ms;
                let point = match value {
                    SeriesValue::Omitted => continue,
                    SeriesValue::Stale => Point { t, v: f64::NAN, stale: true },
                    SeriesValue::Value(v) => Point { t, v, stale: false },
                };
                store.append(SeriesKey { name: name.clone(), labels: labels.clone() }, "rules-test", point);
            }
        }
        let states = rules.iter().map(|_| (RuleAlerts::default(), BTreeSet::new())).collect();
        Ok(Evaluation { store, rules, states })
    }

    /// Evaluates every enabled rule at `t` (milliseconds from 0), in order; the errors
    /// name the rules whose evaluation failed, as promtool names them.
    pub fn at(&mut self, t: i64) -> Result<(), Vec<String>> {
        let mut failed = Vec::new();
        for (rule, (alerts, written)) in self.rules.iter().zip(self.states.iter_mut()) {
            if !rule.spec.enabled {
                continue;
            }
            if let Err(error) = alerts.evaluate(&rule.spec, &rule.matchers, &self.store, t) {
                failed.push(format!("    rule: {}, time: {}, err: {error}", rule.spec.name, go_duration(t)));
                continue;
            }
            // The rule's `ALERTS` and `ALERTS_FOR_STATE` samples, and stale markers for
            // the series it wrote last time but not now (Prometheus's rule group does the
            // same with `seriesInPreviousEval`).
            let mut now = BTreeSet::new();
            for alert in alerts.active.values() {
                for (mut labels, value) in rules::alert_series(&rule.spec, alert).into_iter().flatten() {
                    let name = labels.remove("__name__").unwrap_or_default();
                    let key = SeriesKey { name, labels };
                    self.store.append(key.clone(), "rules", Point { t, v: value, stale: false });
                    now.insert(key);
                }
            }
            for gone in written.difference(&now) {
                self.store.append(gone.clone(), "rules", Point { t, v: f64::NAN, stale: true });
            }
            *written = now;
        }
        if failed.is_empty() { Ok(()) } else { Err(failed) }
    }

    /// The firing alerts of the rules named `alertname` after the last evaluation, as
    /// (labels, annotations), sorted.
    pub fn firing(&self, alertname: &str) -> Vec<(LabelSet, LabelSet)> {
        let mut got: Vec<(LabelSet, LabelSet)> = self
            .rules
            .iter()
            .zip(&self.states)
            .filter(|(rule, _)| rule.spec.name == alertname)
            .flat_map(|(_, (alerts, _))| alerts.active.values())
            .filter(|alert| alert.state == AlertState::Firing)
            .map(|alert| (alert.labels.clone(), alert.annotations.clone()))
            .collect();
        got.sort();
        got
    }

    /// A vector selector (`name{label="value"}`) at `t` over the input series and the
    /// `ALERTS…` series written so far: each series' labels (with `__name__`) and value,
    /// sorted by labels.
    pub fn select(&self, selector: &str, t: i64) -> Result<Vec<(LabelSet, f64)>, String> {
        let selector = parse_selector(selector)?;
        let matchers = labels::compile(&selector.matchers)?;
        let name = selector.name.unwrap_or_default();
        let mut got = self.store.select(&name, &matchers, |labels, series| {
            series.value_at(t).map(|v| {
                let mut labels = labels.clone();
                labels.insert("__name__".into(), name.clone());
                (labels, v)
            })
        });
        got.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(got)
    }
}

/// One `tests` item: loads its series, evaluates every rule at every evaluation time up to
/// the latest `eval_time`, and compares.
fn test_group(group: &TestGroup, evaluation_interval: i64, rules: Vec<LoadedRule>) -> Vec<String> {
    let interval = group.interval.map(|d| d.0).filter(|&d| d > 0).unwrap_or(evaluation_interval);
    let input: Vec<(String, String)> =
        group.input_series.iter().map(|s| (s.series.clone(), s.values.clone())).collect();
    let mut evaluation = match Evaluation::loaded(rules, &input, interval) {
        Ok(evaluation) => evaluation,
        Err(error) => return vec![error],
    };
    let test_name = group.name.as_ref().map(|n| format!("    name: {n},\n")).unwrap_or_default();
    let mut alert_times: Vec<i64> = Vec::new();
    for case in &group.alert_rule_test {
        if case.alertname.is_empty() {
            let within = group.name.as_ref().map(|n| format!(" (in TestGroup {n})")).unwrap_or_default();
            return vec![format!(
                "an item under alert_rule_test misses required attribute alertname at eval_time {}{within}",
                model_duration(case.eval_time.0)
            )];
        }
        alert_times.push(case.eval_time.0);
    }
    alert_times.sort_unstable();
    alert_times.dedup();
    let latest = group
        .alert_rule_test
        .iter()
        .map(|c| c.eval_time.0)
        .chain(group.promql_expr_test.iter().map(|c| c.eval_time.0))
        .max()
        .unwrap_or(0);
    let mut errors = Vec::new();
    let mut next = 0;
    let mut t = 0i64;
    while t <= latest {
        if let Err(failed) = evaluation.at(t) {
            errors.extend(failed);
            return errors;
        }
        // Alert cases whose eval_time falls in [t, t + evaluation_interval) are judged on
        // this evaluation.
        while next < alert_times.len() && alert_times[next] >= t && alert_times[next] < t + evaluation_interval {
            let at = alert_times[next];
            for case in group.alert_rule_test.iter().filter(|c| c.eval_time.0 == at) {
                let got = evaluation.firing(&case.alertname);
                let mut expected: Vec<(LabelSet, LabelSet)> = case
                    .exp_alerts
                    .iter()
                    .map(|a| {
                        let mut labels = non_empty(&a.exp_labels);
                        labels.insert("alertname".into(), case.alertname.clone());
                        (labels, non_empty(&a.exp_annotations))
                    })
                    .collect();
                expected.sort();
                if got != expected {
                    errors.push(format!(
                        "{test_name}    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
                        case.alertname,
                        model_duration(case.eval_time.0),
                        indent_lines(&alerts_text(&expected), "            "),
                        indent_lines(&alerts_text(&got), "            ")
                    ));
                }
            }
            next += 1;
        }
        t += evaluation_interval;
    }
    for case in &group.promql_expr_test {
        let at = model_duration(case.eval_time.0);
        let expr = go_quote(&case.expr);
        let got = match evaluation.select(&case.expr, case.eval_time.0) {
            Ok(got) => got,
            Err(error) => {
                errors.push(format!(
                    "    expr: {expr}, time: {at}, err: {error} (PAKE rule tests evaluate vector selectors only: \
                     name{{label=\"value\"}})"
                ));
                continue;
            }
        };
        let expected: Result<Vec<(LabelSet, f64)>, String> = case
            .exp_samples
            .iter()
            .map(|sample| {
                parse_metric(&sample.labels)
                    .map(|labels| (labels, sample.value))
                    .map_err(|error| format!("labels {}: {error}", go_quote(&sample.labels)))
            })
            .collect();
        let mut expected = match expected {
            Ok(expected) => expected,
            Err(error) => {
                errors.push(format!("    expr: {expr}, time: {at}, err: {error}"));
                continue;
            }
        };
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        // Values compare as Go's reflect.DeepEqual compares them: NaN equals nothing.
        let same = got.len() == expected.len() && got.iter().zip(&expected).all(|(g, e)| g.0 == e.0 && g.1 == e.1);
        if !same {
            errors.push(format!(
                "    expr: {expr}, time: {at},\n        exp: {}\n        got: {}",
                samples_text(&expected),
                samples_text(&got)
            ));
        }
    }
    errors
}

/// A label set from YAML without its empty values (which Prometheus's label sets never
/// hold).
fn non_empty(map: &LabelSet) -> LabelSet {
    map.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_as_prometheus() {
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("1m500ms"), Ok(60_500));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("30m1h").is_err());
        assert!(parse_duration("1.5m").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(model_duration(5_400_000), "1h30m");
        assert_eq!(model_duration(14 * 24 * 3_600_000), "2w");
        assert_eq!(model_duration(90_000), "1m30s");
        assert_eq!(model_duration(0), "0s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(150_000), "2m30s");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_duration(100), "100ms");
    }

    #[test]
    fn the_expanding_notation() {
        use SeriesValue::*;
        assert_eq!(parse_values("-2+4x3").unwrap(), vec![Value(-2.0), Value(2.0), Value(6.0), Value(10.0)]);
        assert_eq!(parse_values(" 1-2x4").unwrap(), [1.0, -1.0, -3.0, -5.0, -7.0].map(Value).to_vec());
        assert_eq!(parse_values("1x4").unwrap(), vec![Value(1.0); 5]);
        assert_eq!(parse_values("1 _x3 stale").unwrap(), vec![Value(1.0), Omitted, Omitted, Omitted, Stale]);
        assert_eq!(
            parse_values("1e3 _ 1e-3+1e+3x1").unwrap(),
            vec![Value(1000.0), Omitted, Value(0.001), Value(1000.001)]
        );
        assert!(
            matches!(parse_values("NaN Inf -Inf").unwrap()[..], [Value(a), Value(b), Value(c)] if a.is_nan() && b == f64::INFINITY && c == f64::NEG_INFINITY)
        );
        assert!(parse_values("0x10").is_ok());
        assert!(parse_values("1+2").unwrap_err().contains("repetition"));
        assert!(parse_values("abc").unwrap_err().contains("expected a number"));
        assert!(parse_values("1xq").unwrap_err().contains("repetition"));
    }

    #[test]
    fn labels_and_values_print_as_go() {
        let labels = parse_metric(r#"up{job="a\"b", instance='x'}"#).unwrap();
        assert_eq!(labels_text(&labels), r#"{__name__="up", instance="x", job="a\"b"}"#);
        assert_eq!(go_float_e(1.0), "1E+00");
        assert_eq!(go_float_e(0.25), "2.5E-01");
        assert_eq!(go_float_e(1_234_567_890.0), "1.23456789E+09");
        assert_eq!(go_float_e(1e-300), "1E-300");
        assert_eq!(go_quote("a\nb\u{1}"), "\"a\\nb\\x01\"");
        assert!(glob_matches("*.yml", "rules.yml"));
        assert!(glob_matches("r?les*.yml", "rules-1.yml"));
        assert!(!glob_matches("*.yml", "rules.yaml"));
    }
}
