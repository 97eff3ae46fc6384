//! A contract as the generators see it: the raw OpenAPI 3.1 document plus a flat list of
//! operations with every `$ref` to parameters, responses and headers resolved.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// The four contracts and what their generated crates are called.
pub struct ContractInfo {
    /// File name under `openapi/`.
    pub file: &'static str,
    /// Short name used for crate and directory names (`mesh` → `pake-mesh-client`).
    pub short: &'static str,
    /// Name of the generated server trait.
    pub trait_name: &'static str,
}

pub const CONTRACTS: &[ContractInfo] = &[
    ContractInfo { file: "api-gateway.yaml", short: "gateway", trait_name: "GatewayApi" },
    ContractInfo { file: "service-mesh.yaml", short: "mesh", trait_name: "ServiceMeshApi" },
    ContractInfo { file: "monitoring.yaml", short: "monitoring", trait_name: "MonitoringApi" },
    ContractInfo { file: "performance.yaml", short: "performance", trait_name: "PerformanceApi" },
];

pub const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

pub struct Contract {
    pub file: String,
    pub doc: Value,
    pub operations: Vec<Operation>,
}

pub struct Operation {
    pub id: String,
    pub method: String,
    pub path: String,
    /// JSON pointer of the operation in the document, for messages.
    pub pointer: String,
    pub summary: String,
    pub description: String,
    pub tag: String,
    /// `None` for public operations; otherwise the scopes the bearer token must carry.
    pub scopes: Option<Vec<String>>,
    pub params: Vec<Param>,
    pub body: Option<RequestBody>,
    pub responses: Vec<Response>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParamLocation {
    Path,
    Query,
    Header,
}

impl ParamLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamLocation::Path => "path",
            ParamLocation::Query => "query",
            ParamLocation::Header => "header",
        }
    }
}

pub struct Param {
    pub name: String,
    pub location: ParamLocation,
    pub required: bool,
    pub description: String,
    /// The parameter's schema as written (a `$ref` or an inline primitive schema).
    pub schema: Value,
    pub pointer: String,
}

pub struct RequestBody {
    pub media_type: String,
    pub schema: Value,
    pub example: Option<Value>,
    pub pointer: String,
}

pub struct Response {
    pub status: u16,
    pub description: String,
    pub content: Option<Content>,
    pub headers: Vec<Header>,
    pub pointer: String,
}

pub struct Content {
    pub media_type: String,
    pub schema: Value,
    pub example: Option<Value>,
}

pub struct Header {
    pub name: String,
    pub required: bool,
    #[allow(dead_code)]
    pub description: String,
    pub schema: Value,
}

/// Escapes a JSON pointer token.
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl Contract {
    pub fn load(path: &Path) -> Result<Contract> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let doc: Value = serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Contract::from_value(file, doc)
    }

    pub fn from_value(file: String, doc: Value) -> Result<Contract> {
        let mut operations = Vec::new();
        let paths = doc.get("paths").and_then(Value::as_object).cloned().unwrap_or_default();
        for (path, item) in &paths {
            let item_pointer = format!("/paths/{}", pointer_token(path));
            let shared_params = item.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
            for method in METHODS {
                let Some(op) = item.get(*method) else { continue };
                let pointer = format!("{item_pointer}/{method}");
                operations.push(Operation::parse(&doc, &file, path, method, &pointer, op, &shared_params)?);
            }
        }
        Ok(Contract { file, doc, operations })
    }

    /// Follows a local `$ref` (`#/components/...`), once or repeatedly.
    pub fn resolve<'a>(doc: &'a Value, value: &'a Value) -> Result<&'a Value> {
        let mut current = value;
        for _ in 0..16 {
            match current.get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    let pointer = reference
                        .strip_prefix('#')
                        .with_context(|| format!("only local references are supported, found {reference}"))?;
                    current = doc.pointer(pointer).with_context(|| format!("dangling reference {reference}"))?;
                }
                None => return Ok(current),
            }
        }
        bail!("reference cycle")
    }

    /// A self-contained JSON Schema (2020-12) for `schema`: component schemas it reaches
    /// are copied under `$defs` and the references rewritten to point there.
    pub fn standalone_schema(&self, schema: &Value) -> Value {
        pake_api_runtime::schema::standalone_schema(&self.doc, schema)
    }
}

fn text(value: &Value, key: &str) -> String {
    value.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

impl Operation {
    fn parse(
        doc: &Value,
        file: &str,
        path: &str,
        method: &str,
        pointer: &str,
        op: &Value,
        shared_params: &[Value],
    ) -> Result<Operation> {
        let id = op
            .get("operationId")
            .and_then(Value::as_str)
            .with_context(|| format!("{file}#{pointer}: operation has no operationId"))?
            .to_string();
        let tag = op
            .get("tags")
            .and_then(Value::as_array)
            .and_then(|tags| tags.first())
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let security = op.get("security").or_else(|| doc.get("security"));
        let scopes = security.and_then(Value::as_array).and_then(|requirements| {
            let first = requirements.first()?.as_object()?;
            let scopes = first.values().next()?.as_array()?;
            Some(scopes.iter().filter_map(Value::as_str).map(String::from).collect())
        });

        let mut params = Vec::new();
        let own_params = op.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
        for (index, raw) in shared_params.iter().chain(own_params.iter()).enumerate() {
            let param_pointer = format!("{pointer}/parameters/{index}");
            let resolved = Contract::resolve(doc, raw).with_context(|| format!("{file}#{param_pointer}"))?;
            let location = match resolved.get("in").and_then(Value::as_str) {
                Some("path") => ParamLocation::Path,
                Some("query") => ParamLocation::Query,
                Some("header") => ParamLocation::Header,
                other => bail!("{file}#{param_pointer}: parameters in {other:?} are not supported"),
            };
            let name = text(resolved, "name");
            // An operation's own parameter overrides a path-level one of the same name.
            params.retain(|p: &Param| !(p.name == name && p.location == location));
            params.push(Param {
                name,
                location,
                required: resolved.get("required").and_then(Value::as_bool).unwrap_or(false),
                description: text(resolved, "description"),
                schema: resolved.get("schema").cloned().unwrap_or(Value::Null),
                pointer: param_pointer,
            });
        }

        let body = match op.get("requestBody") {
            None => None,
            Some(raw) => {
                let body_pointer = format!("{pointer}/requestBody");
                let resolved = Contract::resolve(doc, raw)?;
                let content = resolved.get("content").and_then(Value::as_object);
                let (media_type, media) = content
                    .and_then(|c| c.iter().next())
                    .with_context(|| format!("{file}#{body_pointer}: request body without content"))?;
                Some(RequestBody {
                    media_type: media_type.clone(),
                    schema: media.get("schema").cloned().unwrap_or(Value::Null),
                    example: media_example(media),
                    pointer: body_pointer,
                })
            }
        };

        let mut responses = Vec::new();
        if let Some(map) = op.get("responses").and_then(Value::as_object) {
            for (status, raw) in map {
                let response_pointer = format!("{pointer}/responses/{status}");
                // `default` and ranges are reported by the linter, not modelled.
                let Ok(status) = status.parse::<u16>() else { continue };
                let resolved = Contract::resolve(doc, raw)?;
                let content = resolved.get("content").and_then(Value::as_object).and_then(|c| c.iter().next()).map(
                    |(media_type, media)| Content {
                        media_type: media_type.clone(),
                        schema: media.get("schema").cloned().unwrap_or(Value::Null),
                        example: media_example(media),
                    },
                );
                let mut headers = Vec::new();
                if let Some(map) = resolved.get("headers").and_then(Value::as_object) {
                    for (name, raw) in map {
                        let header = Contract::resolve(doc, raw)?;
                        headers.push(Header {
                            name: name.clone(),
                            required: header.get("required").and_then(Value::as_bool).unwrap_or(false),
                            description: text(header, "description"),
                            schema: header.get("schema").cloned().unwrap_or(Value::Null),
                        });
                    }
                }
                responses.push(Response {
                    status,
                    description: text(resolved, "description"),
                    content,
                    headers,
                    pointer: response_pointer,
                });
            }
        }
        responses.sort_by_key(|r| r.status);

        Ok(Operation {
            id,
            method: method.to_string(),
            path: path.to_string(),
            pointer: pointer.to_string(),
            summary: text(op, "summary"),
            description: text(op, "description"),
            tag,
            scopes,
            params,
            body,
            responses,
        })
    }

    pub fn success_responses(&self) -> impl Iterator<Item = &Response> {
        self.responses.iter().filter(|r| (200..300).contains(&r.status))
    }
}

/// The media type's `example`, or the value of its first named `examples` entry.
fn media_example(media: &Value) -> Option<Value> {
    if let Some(example) = media.get("example") {
        return Some(example.clone());
    }
    media
        .get("examples")
        .and_then(Value::as_object)
        .and_then(|examples| examples.values().next())
        .and_then(|example| example.get("value"))
        .cloned()
}
