//! How operator commands print: aligned tables by default, JSON or YAML for scripts, colour
//! only on a terminal (and never with `NO_COLOR`), ids alone with `--quiet`.

use serde_json::Value;
use std::io::{IsTerminal, Write};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// A table column: its header and the JSON pointer of its value in a row.
pub type Column = (&'static str, &'static str);

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub format: Format,
    pub quiet: bool,
    pub color: bool,
}

impl Output {
    pub fn new(format: Format, quiet: bool) -> Output {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Output { format, quiet, color }
    }

    /// A list (an array, or the contracts' page with `items`) as rows of `columns`.
    pub fn list(&self, value: &Value, columns: &[Column]) {
        let rows: &[Value] = match value {
            Value::Array(rows) => rows,
            _ => value["items"].as_array().map_or(&[], Vec::as_slice),
        };
        match self.format {
            Format::Json | Format::Yaml => self.document(value),
            Format::Table => self.table(rows, columns),
        }
    }

    /// One object, as a one-row table of `columns`.
    pub fn one(&self, value: &Value, columns: &[Column]) {
        match self.format {
            Format::Json | Format::Yaml => self.document(value),
            Format::Table => self.table(std::slice::from_ref(value), columns),
        }
    }

    /// A line for people, after an action; scripts get `value` with `-o json|yaml`.
    pub fn done(&self, value: &Value, message: &str) {
        match self.format {
            Format::Json | Format::Yaml => self.document(value),
            Format::Table if self.quiet => {}
            Format::Table => emit(&format!("{message}\n")),
        }
    }

    pub fn document(&self, value: &Value) {
        let text = match self.format {
            Format::Yaml => serde_yaml::to_string(value).unwrap_or_default(),
            _ => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        };
        emit(&text);
    }

    fn table(&self, rows: &[Value], columns: &[Column]) {
        let cells: Vec<Vec<String>> =
            rows.iter().map(|row| columns.iter().map(|(_, pointer)| cell(row.pointer(pointer))).collect()).collect();
        let mut out = std::io::stdout().lock();
        if self.quiet {
            for row in &cells {
                let _ = writeln!(out, "{}", row[0]);
            }
            return;
        }
        let widths: Vec<usize> = columns
            .iter()
            .enumerate()
            .map(|(n, (header, _))| {
                cells.iter().map(|row| row[n].chars().count()).chain([header.len()]).max().unwrap_or(0)
            })
            .collect();
        let line = |texts: Vec<(String, Option<&str>)>| {
            let last = texts.len() - 1;
            let mut line = String::new();
            for (n, (text, style)) in texts.into_iter().enumerate() {
                let pad = if n == last { 0 } else { widths[n] - text.chars().count() + 2 };
                match style.filter(|_| self.color) {
                    Some(style) => line.push_str(&format!("\x1b[{style}m{text}\x1b[0m")),
                    None => line.push_str(&text),
                }
                line.push_str(&" ".repeat(pad));
            }
            line
        };
        let _ = writeln!(out, "{}", line(columns.iter().map(|(header, _)| (header.to_string(), Some("1"))).collect()));
        for row in cells {
            let _ = writeln!(
                out,
                "{}",
                line(
                    row.into_iter()
                        .map(|text| {
                            let style = style_of(&text);
                            (text, style)
                        })
                        .collect()
                )
            );
        }
    }
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
pub fn emit(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// A value as a table cell: strings as they are, lists joined, maps as `k=v`, nothing as `-`.
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(float) if number.is_f64() => format!("{}", (float * 1000.0).round() / 1000.0),
            _ => number.to_string(),
        },
        Some(Value::Bool(flag)) => flag.to_string(),
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) => items.iter().map(|item| cell(Some(item))).collect::<Vec<_>>().join(","),
        Some(Value::Object(map)) if map.is_empty() => "-".into(),
        // A label matcher reads as Prometheus writes it: service=~"arxiv-.*".
        Some(Value::Object(map)) if map.len() == 3 && map.contains_key("label") && map.contains_key("op") => {
            let op = match map["op"].as_str() {
                Some("equal") => "=",
                Some("not_equal") => "!=",
                Some("match_regex") => "=~",
                Some("not_match_regex") => "!~",
                _ => "?",
            };
            format!("{}{op}{}", cell(map.get("label")), cell(map.get("value")))
        }
        Some(Value::Object(map)) => {
            map.iter().map(|(k, v)| format!("{k}={}", cell(Some(v)))).collect::<Vec<_>>().join(",")
        }
    }
}

/// The colour of a state word (health, breaker and alert states, verdicts).
fn style_of(text: &str) -> Option<&'static str> {
    match text {
        "passing" | "pass" | "closed" | "resolved" | "completed" | "healthy" => Some("32"),
        "warning" | "warn" | "half_open" | "pending" | "queued" | "running" => Some("33"),
        "critical" | "fail" | "open" | "firing" | "failed" => Some("31"),
        _ => None,
    }
}
