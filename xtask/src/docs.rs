//! Renders a contract as one self-contained HTML page (inline CSS, no scripts, nothing
//! fetched), served by each generated server at `/docs`.

use crate::contract::{Contract, Operation};
use serde_json::Value;
use std::fmt::Write;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn anchor(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// A one-line summary of a schema: its type, reference and constraints.
fn schema_summary(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{}\">{}</a>", anchor(name), escape(name));
    }
    let mut parts = Vec::new();
    match schema.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let items = schema.get("items").map(schema_summary).unwrap_or_default();
            parts.push(format!("array of {items}"));
        }
        Some(Value::String(t)) => parts.push(escape(t)),
        Some(Value::Array(types)) => {
            parts.push(escape(&types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" | ")))
        }
        _ => {}
    }
    for key in [
        "format",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "maxProperties",
        "default",
        "const",
    ] {
        if let Some(value) = schema.get(key) {
            parts.push(format!("{key}: <code>{}</code>", escape(&value.to_string())));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        parts.push(format!("one of <code>{}</code>", escape(&values.join(", "))));
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        parts.push(format!("map of {}", schema_summary(additional)));
    }
    parts.join(", ")
}

fn render_operation(out: &mut String, contract: &Contract, op: &Operation) {
    let _ = write!(
        out,
        "<section class=\"op\" id=\"op-{id}\"><h3><span class=\"method {m}\">{M}</span> <code>{path}</code></h3>\
         <p class=\"summary\">{summary} <span class=\"opid\">{id}</span></p><p>{description}</p>",
        id = escape(&op.id),
        m = op.method.to_lowercase(),
        M = op.method,
        path = escape(&op.path),
        summary = escape(&op.summary),
        description = escape(&op.description),
    );
    match &op.scopes {
        Some(scopes) => {
            let _ =
                write!(out, "<p class=\"auth\">Bearer token with scope <code>{}</code></p>", escape(&scopes.join(" ")));
        }
        None => out.push_str("<p class=\"auth\">Public</p>"),
    }
    if !op.params.is_empty() {
        out.push_str("<table><tr><th>Parameter</th><th>In</th><th>Schema</th><th>Description</th></tr>");
        for param in &op.params {
            let resolved = contract.resolve(&param.schema).unwrap_or(&param.schema);
            let schema = if param.schema.get("$ref").is_some() {
                format!("{} ({})", schema_summary(&param.schema), schema_summary(resolved))
            } else {
                schema_summary(resolved)
            };
            let _ = write!(
                out,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&param.name),
                if param.required { " <b>required</b>" } else { "" },
                param.location.as_str(),
                schema,
                escape(&param.description)
            );
        }
        out.push_str("</table>");
    }
    for media in op.body.iter().flat_map(|body| &body.content) {
        let _ = write!(
            out,
            "<p><b>Body</b> <code>{}</code>: {}</p>",
            escape(&media.media_type),
            schema_summary(&media.schema)
        );
        if let Some(example) = &media.example {
            let pretty = serde_json::to_string_pretty(example).unwrap_or_default();
            let _ = write!(out, "<pre>{}</pre>", escape(&pretty));
        }
    }
    out.push_str("<table><tr><th>Status</th><th>Body</th><th>Headers</th><th>Description</th></tr>");
    for response in &op.responses {
        let bodies: Vec<String> = response
            .content
            .iter()
            .map(|c| format!("<code>{}</code> {}", escape(&c.media_type), schema_summary(&c.schema)))
            .collect();
        let body = bodies.join(" ");
        let headers: Vec<String> =
            response.headers.iter().map(|h| format!("<code>{}</code>", escape(&h.name))).collect();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            response.status,
            body,
            headers.join(" "),
            escape(&response.description)
        );
    }
    out.push_str("</table>");
    for response in op.success_responses() {
        if let Some(example) = response.content.first().and_then(|c| c.example.as_ref()) {
            let pretty = match example {
                Value::String(text) => text.clone(),
                other => serde_json::to_string_pretty(other).unwrap_or_default(),
            };
            let _ = write!(
                out,
                "<details><summary>Example {} response</summary><pre>{}</pre></details>",
                response.status,
                escape(&pretty)
            );
        }
    }
    out.push_str("</section>");
}

/// Renders the page. The first line names the command that made it.
pub fn render(contract: &Contract, header: &str) -> String {
    let doc = &contract.doc;
    let title = doc.pointer("/info/title").and_then(Value::as_str).unwrap_or_default();
    let version = doc.pointer("/info/version").and_then(Value::as_str).unwrap_or_default();
    let description = doc.pointer("/info/description").and_then(Value::as_str).unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "<!-- {header} -->");
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{CSS}</style></head><body>\
         <header><h1>{t} <small>{v}</small></h1><p>{d}</p><p><a href=\"openapi.json\">openapi.json</a></p></header><nav><ul>",
        t = escape(title),
        v = escape(version),
        d = escape(description),
    );
    let tags: Vec<(String, String)> = doc
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
                t.get("description").and_then(Value::as_str).unwrap_or_default().to_string(),
            )
        })
        .collect();
    for op in &contract.operations {
        let _ = write!(
            out,
            "<li><a href=\"#op-{id}\"><span class=\"method {m}\">{M}</span> {path}</a></li>",
            id = escape(&op.id),
            m = op.method.to_lowercase(),
            M = op.method,
            path = escape(&op.path)
        );
    }
    out.push_str("</ul></nav><main>");
    for (tag, tag_description) in &tags {
        let _ = write!(out, "<h2 id=\"tag-{}\">{}</h2><p>{}</p>", anchor(tag), escape(tag), escape(tag_description));
        for op in contract.operations.iter().filter(|op| op.tags.first() == Some(tag)) {
            render_operation(&mut out, contract, op);
        }
    }
    out.push_str("<h2 id=\"schemas\">Schemas</h2>");
    if let Some(schemas) = doc.pointer("/components/schemas").and_then(Value::as_object) {
        for (name, schema) in schemas {
            let _ = write!(
                out,
                "<section class=\"schema\" id=\"schema-{}\"><h3>{}</h3><p>{}</p>",
                anchor(name),
                escape(name),
                escape(schema.get("description").and_then(Value::as_str).unwrap_or_default())
            );
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                out.push_str("<table><tr><th>Field</th><th>Schema</th><th>Description</th></tr>");
                for (field, sub) in properties {
                    let _ = write!(
                        out,
                        "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(field),
                        if required.contains(&field.as_str()) { " <b>required</b>" } else { "" },
                        schema_summary(sub),
                        escape(sub.get("description").and_then(Value::as_str).unwrap_or_default())
                    );
                }
                out.push_str("</table>");
            } else {
                let _ = write!(out, "<p>{}</p>", schema_summary(schema));
            }
            out.push_str("</section>");
        }
    }
    out.push_str("</main></body></html>\n");
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;display:grid;grid-template-columns:22rem 1fr;color:#222}\
header{grid-column:1/3;padding:1rem 2rem;background:#1d2b3a;color:#fff}header a{color:#9cf}\
nav{padding:1rem;border-right:1px solid #ddd;font-size:.85rem;overflow:auto;max-height:100vh;position:sticky;top:0}\
nav ul{list-style:none;padding:0}nav li{margin:.2rem 0}nav a{text-decoration:none;color:#222}\
main{padding:1rem 2rem;max-width:70rem}.op,.schema{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}\
.method{display:inline-block;min-width:4em;text-align:center;border-radius:3px;color:#fff;font-size:.8em;padding:1px 4px}\
.get{background:#2b7bb9}.post{background:#3a9b3a}.put{background:#b98b2b}.patch{background:#8b5cb9}.delete{background:#b93a3a}\
.opid{color:#888;font-family:monospace;font-size:.85em}.auth{color:#555;font-size:.9em}\
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.5rem 0}td,th{border:1px solid #e3e3e3;padding:4px 6px;text-align:left;vertical-align:top}\
pre{background:#f6f8fa;padding:.5rem;overflow:auto}code{font-size:.95em}";
