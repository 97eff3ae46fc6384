//! A reader of the Prometheus text exposition format (0.0.4) and of the OpenMetrics text
//! that `prometheus-client` writes (counters named `x` with samples `x_total`, `# EOF`).
//!
//! Written here rather than taken from `prometheus-parse`: that crate splits label lists
//! on `,` and `=` (so a value holding either, or an escaped quote, is misread), and finds a
//! sample's type only under its exact name (so OpenMetrics counters come out untyped).
//! Lines this reader cannot make sense of are skipped and counted, never fatal: one bad
//! line of a target must not lose the rest of its scrape.

use crate::labels::LabelSet;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// One sample line: its name as written, labels, value and optional timestamp (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: LabelSet,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// A metric family: `# TYPE`/`# HELP` and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition and how many lines were skipped.
#[derive(Debug, Default)]
pub struct Exposition {
    pub families: Vec<Family>,
    pub skipped_lines: usize,
}

pub fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let family_of = |out: &mut Exposition, index: &mut HashMap<String, usize>, name: &str| -> usize {
        if let Some(&i) = index.get(name) {
            return i;
        }
        out.families.push(Family { name: name.to_string(), kind: Kind::Untyped, help: String::new(), samples: vec![] });
        index.insert(name.to_string(), out.families.len() - 1);
        out.families.len() - 1
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, char::is_whitespace);
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    let i = family_of(&mut out, &mut index, name);
                    out.families[i].kind = match kind.trim() {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "summary" => Kind::Summary,
                        _ => Kind::Untyped,
                    };
                }
                (Some("HELP"), Some(name), help) => {
                    let i = family_of(&mut out, &mut index, name);
                    out.families[i].help = unescape_help(help.unwrap_or("").trim());
                }
                _ => {}
            }
            continue;
        }
        let Some(sample) = parse_sample(line) else {
            out.skipped_lines += 1;
            continue;
        };
        // The family: the sample's own name, or the name less a suffix its type adds.
        let family = [&sample.name[..]]
            .into_iter()
            .chain(
                ["_total", "_bucket", "_sum", "_count", "_created", "_info", "_gcount", "_gsum"]
                    .iter()
                    .filter_map(|suffix| sample.name.strip_suffix(suffix)),
            )
            .find(|name| index.contains_key(*name))
            .map(str::to_string)
            .unwrap_or_else(|| sample.name.clone());
        let i = family_of(&mut out, &mut index, &family);
        out.families[i].samples.push(sample);
    }
    out
}

fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name{label="value",…} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
    let name = &line[..name_end];
    if !crate::labels::valid_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = LabelSet::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let label = rest[..eq].trim();
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut end = None;
            let mut chars = rest.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next()? {
                        (_, 'n') => value.push('\n'),
                        (_, other) => value.push(other),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    other => value.push(other),
                }
            }
            rest = &rest[end? + 1..];
            if label.is_empty() {
                return None;
            }
            labels.insert(label.to_string(), value);
            rest = rest.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = parse_float(fields.next()?)?;
    let timestamp_ms = match fields.next() {
        // OpenMetrics writes seconds with a fraction, the 0.0.4 format integer milliseconds.
        Some(ts) if ts.contains('.') => ts.parse::<f64>().ok().map(|s| (s * 1000.0) as i64),
        Some(ts) => ts.parse::<i64>().ok(),
        None => None,
    };
    Some(Sample { name: name.to_string(), labels, value, timestamp_ms })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openmetrics_counters_histograms_and_escapes() {
        let text = "# HELP pake_x_http_requests HTTP requests.\n\
                    # TYPE pake_x_http_requests counter\n\
                    pake_x_http_requests_total{method=\"GET\",route=\"/a,b=c\",q=\"say \\\"hi\\\"\"} 3\n\
                    # TYPE lat histogram\n\
                    lat_bucket{le=\"0.5\"} 1\n\
                    lat_bucket{le=\"+Inf\"} 2\n\
                    lat_sum 0.7\n\
                    lat_count 2\n\
                    plain 1.5 1700000000000\n\
                    bad line here\n\
                    # EOF\n";
        let parsed = parse(text);
        assert_eq!(parsed.skipped_lines, 1);
        let counter = &parsed.families[0];
        assert_eq!(counter.kind, Kind::Counter);
        assert_eq!(counter.help, "HTTP requests.");
        assert_eq!(counter.samples[0].name, "pake_x_http_requests_total");
        assert_eq!(counter.samples[0].labels["route"], "/a,b=c");
        assert_eq!(counter.samples[0].labels["q"], "say \"hi\"");
        let hist = &parsed.families[1];
        assert_eq!((hist.kind, hist.samples.len()), (Kind::Histogram, 4));
        assert_eq!(hist.samples[1].value, 2.0);
        assert_eq!(hist.samples[1].labels["le"], "+Inf");
        let plain = &parsed.families[2];
        assert_eq!(plain.samples[0].timestamp_ms, Some(1_700_000_000_000));
    }
}
