//! Label sets, label matchers and fingerprints: the vocabulary series, rules, alerts and
//! silences share.
//!
//! Matchers follow PromQL (and Alertmanager's silences): `=`, `!=`, `=~`, `!~`, regular
//! expressions fully anchored, and a label that is absent has the empty value.
//! Fingerprints are Alertmanager's (`model.LabelSet.Fingerprint`: FNV-1a 64 over the sorted
//! names and values, each followed by the byte 0xff), so that the `fingerprint` of a webhook
//! payload is the one Alertmanager would send for the same labels.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A label set, ordered by name: series identity and alert labels.
pub type LabelSet = BTreeMap<String, String>;

/// How a matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOp {
    Equal,
    NotEqual,
    MatchRegex,
    NotMatchRegex,
}

/// The contract's `LabelMatcher`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatcherSpec {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
}

/// A matcher ready to apply (its regex compiled once).
#[derive(Debug, Clone)]
pub struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    /// Compiles `spec`; the error says why a regex does not compile.
    pub fn new(spec: &MatcherSpec) -> Result<Matcher, String> {
        let regex = match spec.op {
            MatchOp::MatchRegex | MatchOp::NotMatchRegex => Some(anchored(&spec.value)?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher { label: spec.label.clone(), op: spec.op, value: spec.value.clone(), regex })
    }

    pub fn matches_value(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::MatchRegex, Some(regex)) => regex.is_match(value),
            (MatchOp::NotMatchRegex, Some(regex)) => !regex.is_match(value),
            (_, None) => false,
        }
    }

    /// Whether `labels` satisfy the matcher; an absent label is the empty string.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.matches_value(labels.get(&self.label).map(String::as_str).unwrap_or(""))
    }
}

/// Compiles a fully anchored regex, bounded in size so that no pattern a client sends
/// makes the process grow without bound.
pub fn anchored(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(1 << 20).build().map_err(|error| {
        format!("the regular expression {pattern:?} does not compile: {}", first_line(&error.to_string()))
    })
}

fn first_line(text: &str) -> String {
    text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(text).trim().to_string()
}

pub fn compile(specs: &[MatcherSpec]) -> Result<Vec<Matcher>, String> {
    specs.iter().map(Matcher::new).collect()
}

pub fn all_match(matchers: &[Matcher], labels: &LabelSet) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// Parses the `match` query parameter: comma-separated `name<op>"value"` with backslash
/// escapes inside the quotes (the contract's pattern has checked the shape).
pub fn parse_selector(text: &str) -> Result<Vec<Matcher>, String> {
    let mut matchers = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let name_end = rest.find(['=', '!']).ok_or_else(|| format!("expected an operator in {rest:?}"))?;
        let label = &rest[..name_end];
        rest = &rest[name_end..];
        let (op, skip) = if rest.starts_with("=~") {
            (MatchOp::MatchRegex, 2)
        } else if rest.starts_with("!~") {
            (MatchOp::NotMatchRegex, 2)
        } else if rest.starts_with("!=") {
            (MatchOp::NotEqual, 2)
        } else {
            (MatchOp::Equal, 1)
        };
        rest = rest[skip..].strip_prefix('"').ok_or("expected a quoted value")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => return Err("a backslash ends the value".into()),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                other => value.push(other),
            }
        }
        let end = end.ok_or("an unterminated quoted value")?;
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
        matchers.push(Matcher::new(&MatcherSpec { label: label.to_string(), op, value })?);
    }
    Ok(matchers)
}

/// Alertmanager's fingerprint of a label set, as 16 hex digits.
pub fn fingerprint(labels: &LabelSet) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut hash = OFFSET;
    let mut add = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    // BTreeMap iterates in name order, which is the order Alertmanager sorts by.
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{hash:016x}")
}

/// Whether a label name is one a client may set: the Prometheus syntax, at most 128
/// characters, not reserved (`__…`).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && !name.starts_with("__")
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a metric name has the Prometheus syntax.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.is_empty()
        && name.len() <= 200
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> LabelSet {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn regexes_are_anchored_and_absent_labels_are_empty() {
        let m =
            Matcher::new(&MatcherSpec { label: "code".into(), op: MatchOp::MatchRegex, value: "5..".into() }).unwrap();
        assert!(m.matches(&set(&[("code", "503")])));
        assert!(!m.matches(&set(&[("code", "5030")])));
        assert!(!m.matches(&set(&[])));
        let empty = Matcher::new(&MatcherSpec { label: "zone".into(), op: MatchOp::Equal, value: "".into() }).unwrap();
        assert!(empty.matches(&set(&[("code", "1")])));
        let bad = Matcher::new(&MatcherSpec { label: "x".into(), op: MatchOp::MatchRegex, value: "(".into() });
        assert!(bad.unwrap_err().contains("does not compile"));
    }

    #[test]
    fn selectors_parse_with_escapes() {
        let ms = parse_selector(r#"service="se\"arch",code=~"5..",zone!="",x!~"a|b""#).unwrap();
        assert_eq!(ms.len(), 4);
        assert_eq!(ms[0].value, "se\"arch");
        assert_eq!(ms[1].op, MatchOp::MatchRegex);
        assert_eq!(ms[2].op, MatchOp::NotEqual);
        assert_eq!(ms[3].op, MatchOp::NotMatchRegex);
        assert!(parse_selector(r#"a=~"(""#).is_err());
    }

    #[test]
    fn fingerprints_are_alertmanagers() {
        // Alertmanager's model: the fingerprint of the empty label set is the FNV-1a offset.
        assert_eq!(fingerprint(&LabelSet::new()), "cbf29ce484222325");
        let a = fingerprint(&set(&[("alertname", "x"), ("service", "search")]));
        let b = fingerprint(&set(&[("service", "search"), ("alertname", "x")]));
        assert_eq!(a, b);
        assert_ne!(a, fingerprint(&set(&[("alertname", "x"), ("service", "searc")])));
    }
}
