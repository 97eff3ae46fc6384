//! One reading of an OpenAPI 3.1 contract, shared by everything that reads one: the
//! generator (`xtask`: its linter, the server and docs generators, the breaking-change
//! check) and the conformance engine.
//!
//! A [`Contract`] is the raw document plus a flat list of [`Operation`]s with every
//! `$ref` to path items, parameters, request bodies, responses, headers and links
//! followed. The reading is the OpenAPI specification's, not PAKE's conventions: those are
//! the linter's job, so the engine can check any contract (including a tiny one written
//! inside a test) and the linter sees what the engine will see. In particular:
//!
//! - a path item may be a `$ref`; operations read through one carry the JSON pointer of
//!   where they are written;
//! - every parameter location is kept, cookies included;
//! - a path parameter is required whatever its `required` says (OpenAPI: it MUST be
//!   `true`; the linter reports one that does not say so);
//! - a missing schema is `true`, JSON Schema's "anything", never `null`;
//! - references are followed at most [`MAX_REF_HOPS`] times.
//!
//! Self-contained JSON Schemas for validators come from [`Contract::standalone_schema`].

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Why a contract could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{name} is not valid yaml: {source}")]
    Parse { name: String, source: serde_yaml::Error },
    #[error("{name}#{pointer}: {message}")]
    Invalid { name: String, pointer: String, message: String },
}

/// The HTTP methods an OpenAPI path item can declare, in document-reading order.
pub const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// How many `$ref`s in a row are followed before a chain counts as a cycle.
pub const MAX_REF_HOPS: usize = 32;

/// Where a parameter is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ParamLocation {
    Path,
    Query,
    Header,
    Cookie,
}

impl ParamLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamLocation::Path => "path",
            ParamLocation::Query => "query",
            ParamLocation::Header => "header",
            ParamLocation::Cookie => "cookie",
        }
    }
}

/// One declared parameter of an operation.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: ParamLocation,
    /// Always `true` for path parameters.
    pub required: bool,
    pub description: String,
    /// The schema as written (possibly a `$ref`); `true` when there is none.
    pub schema: Value,
    /// JSON pointer of the parameter (or of the `$ref` to it) in the document.
    pub pointer: String,
}

/// A media type of a request or response body.
#[derive(Debug, Clone)]
pub struct MediaType {
    pub media_type: String,
    /// The schema as written (possibly a `$ref`); `true` when there is none.
    pub schema: Value,
    /// The `example`, or the value of the first named `examples` entry.
    pub example: Option<Value>,
}

impl MediaType {
    pub fn is_json(&self) -> bool {
        is_json_media_type(&self.media_type)
    }
}

/// The declared request body of an operation.
#[derive(Debug, Clone)]
pub struct RequestBody {
    pub required: bool,
    /// Media types in document order.
    pub content: Vec<MediaType>,
    pub pointer: String,
}

impl RequestBody {
    /// The JSON media type and schema, when the body accepts JSON.
    pub fn json(&self) -> Option<(&str, &Value)> {
        self.content.iter().find(|m| m.is_json()).map(|m| (m.media_type.as_str(), &m.schema))
    }
}

/// A declared response header.
#[derive(Debug, Clone)]
pub struct Header {
    pub name: String,
    pub required: bool,
    pub description: String,
    /// `true` when there is none.
    pub schema: Value,
}

/// An OpenAPI link: the operation a response leads to and how its parameters are taken
/// from the response (runtime expressions such as `$response.body#/id`). Links by
/// `operationRef` are not read.
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub operation_id: String,
    pub parameters: BTreeMap<String, String>,
}

/// One declared response of an operation (explicit statuses only: `default` and ranges
/// such as `4XX` are not modelled, and the linter refuses them).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub description: String,
    /// Media types in document order; empty for a response without a body.
    pub content: Vec<MediaType>,
    pub headers: Vec<Header>,
    pub links: Vec<Link>,
    pub pointer: String,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One operation of a contract.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    /// Upper case (`GET`, `POST`, …).
    pub method: String,
    pub path: String,
    /// JSON pointer of the operation where it is written (through a path-item `$ref`, the
    /// target's).
    pub pointer: String,
    pub summary: String,
    pub description: String,
    pub tags: Vec<String>,
    /// `None` for public operations; otherwise the scopes the bearer token must carry
    /// (those of the first security requirement).
    pub scopes: Option<Vec<String>>,
    /// Path-item parameters first, overridden by the operation's own of the same name and
    /// location.
    pub params: Vec<Param>,
    pub body: Option<RequestBody>,
    /// Sorted by status.
    pub responses: Vec<Response>,
}

impl Operation {
    pub fn is_secured(&self) -> bool {
        self.scopes.is_some()
    }

    pub fn response(&self, status: u16) -> Option<&Response> {
        self.responses.iter().find(|r| r.status == status)
    }

    pub fn declares(&self, status: u16) -> bool {
        self.response(status).is_some()
    }

    pub fn success_responses(&self) -> impl Iterator<Item = &Response> {
        self.responses.iter().filter(|r| r.is_success())
    }

    pub fn path_params(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.location == ParamLocation::Path)
    }

    /// `GET /v1/things/{id}` style label for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A contract loaded from an OpenAPI 3.1 document.
#[derive(Debug, Clone)]
pub struct Contract {
    /// File name (or the name given with inline text), for messages and reports.
    pub name: String,
    pub doc: Value,
    pub operations: Vec<Operation>,
}

/// `true` for `application/json` and `application/*+json`.
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Escapes a JSON pointer token.
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Follows local `$ref`s (`#/...`) in `doc` until a value without one; returns it with
/// its JSON pointer (`pointer` is where `value` itself is).
pub fn resolve_at<'a>(doc: &'a Value, pointer: &str, value: &'a Value) -> Result<(String, &'a Value), String> {
    let mut current = (pointer.to_string(), value);
    for hops in 0..=MAX_REF_HOPS {
        match current.1.get("$ref").and_then(Value::as_str) {
            Some(_) if hops == MAX_REF_HOPS => break,
            Some(reference) => current = target(doc, reference)?,
            None => return Ok(current),
        }
    }
    Err(format!("reference cycle (more than {MAX_REF_HOPS} $ref hops)"))
}

/// Follows local `$ref`s in `doc` until a value without one.
pub fn resolve<'a>(doc: &'a Value, value: &'a Value) -> Result<&'a Value, String> {
    resolve_at(doc, "", value).map(|(_, value)| value)
}

/// The value a local reference points at, with its pointer.
fn target<'a>(doc: &'a Value, reference: &str) -> Result<(String, &'a Value), String> {
    let pointer =
        reference.strip_prefix('#').ok_or_else(|| format!("only local references are supported, found {reference}"))?;
    let value = doc.pointer(pointer).ok_or_else(|| format!("dangling reference {reference}"))?;
    Ok((pointer.to_string(), value))
}

fn text(value: &Value, key: &str) -> String {
    value.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn schema_of(value: &Value) -> Value {
    value.get("schema").cloned().unwrap_or(Value::Bool(true))
}

impl Contract {
    /// Reads a contract from a YAML (or JSON) file.
    pub fn load(path: &Path) -> Result<Contract, ContractError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ContractError::Read { path: path.to_path_buf(), source })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Contract::from_yaml_str(&name, &text)
    }

    /// Reads a contract from YAML (or JSON) text; `name` is what messages call it.
    pub fn from_yaml_str(name: &str, text: &str) -> Result<Contract, ContractError> {
        let doc: Value =
            serde_yaml::from_str(text).map_err(|source| ContractError::Parse { name: name.to_string(), source })?;
        Contract::from_value(name, doc)
    }

    /// Reads a contract from its parsed document.
    pub fn from_value(name: &str, doc: Value) -> Result<Contract, ContractError> {
        let mut contract = Contract { name: name.to_string(), doc, operations: Vec::new() };
        let mut operations = Vec::new();
        let paths = contract.doc.get("paths").and_then(Value::as_object);
        for (path, item) in paths.into_iter().flatten() {
            let written_at = format!("/paths/{}", pointer_token(path));
            let (item_pointer, item) = contract.resolve_at(&written_at, item)?;
            let shared = item.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            for method in METHODS {
                let Some(op) = item.get(*method) else { continue };
                let pointer = format!("{item_pointer}/{method}");
                operations.push(contract.parse_operation(path, method, &pointer, op, (&item_pointer, shared))?);
            }
        }
        let mut seen = BTreeSet::new();
        for op in &operations {
            if !seen.insert(op.id.as_str()) {
                return Err(contract.invalid(&op.pointer, format!("operationId {} is used twice", op.id)));
            }
        }
        contract.operations = operations;
        Ok(contract)
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn operation(&self, id: &str) -> Option<&Operation> {
        self.operations.iter().find(|op| op.id == id)
    }

    /// Every path with the (upper-case) methods it declares.
    pub fn paths(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut paths: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for op in &self.operations {
            paths.entry(op.path.as_str()).or_default().push(op.method.as_str());
        }
        paths
    }

    /// Follows local `$ref`s until a value without one.
    pub fn resolve<'a>(&'a self, value: &'a Value) -> Result<&'a Value, String> {
        resolve(&self.doc, value)
    }

    /// The value a local reference points at.
    pub fn target(&self, reference: &str) -> Result<&Value, String> {
        target(&self.doc, reference).map(|(_, value)| value)
    }

    /// A self-contained JSON Schema (2020-12) for `schema`: every component schema it
    /// reaches is copied under `$defs` and references are rewritten to point there, so a
    /// validator can compile it without the rest of the document.
    pub fn standalone_schema(&self, schema: &Value) -> Value {
        pake_api_runtime::schema::standalone_schema(&self.doc, schema)
    }

    /// An operation's parameters as one JSON object schema, the way generated routers
    /// validate them: one property per parameter (named as declared), the required ones
    /// listed, nothing else allowed. References are left as written; see
    /// [`Contract::standalone_schema`].
    pub fn params_schema(&self, op: &Operation) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for param in &op.params {
            properties.insert(param.name.clone(), param.schema.clone());
            if param.required {
                required.push(Value::String(param.name.clone()));
            }
        }
        serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }

    fn invalid(&self, pointer: &str, message: impl Into<String>) -> ContractError {
        ContractError::Invalid { name: self.name.clone(), pointer: pointer.to_string(), message: message.into() }
    }

    fn resolve_at<'a>(&'a self, pointer: &str, value: &'a Value) -> Result<(String, &'a Value), ContractError> {
        resolve_at(&self.doc, pointer, value).map_err(|message| self.invalid(pointer, message))
    }

    fn resolved<'a>(&'a self, pointer: &str, value: &'a Value) -> Result<&'a Value, ContractError> {
        self.resolve_at(pointer, value).map(|(_, value)| value)
    }

    fn parse_operation(
        &self,
        path: &str,
        method: &str,
        pointer: &str,
        op: &Value,
        (item_pointer, shared): (&str, &[Value]),
    ) -> Result<Operation, ContractError> {
        let id = op
            .get("operationId")
            .and_then(Value::as_str)
            .ok_or_else(|| self.invalid(pointer, "operation has no operationId"))?
            .to_string();
        let security = op.get("security").or_else(|| self.doc.get("security"));
        let scopes = security.and_then(Value::as_array).and_then(|requirements| {
            let first = requirements.first()?.as_object()?;
            let scopes = first.values().next()?.as_array()?;
            Some(scopes.iter().filter_map(Value::as_str).map(String::from).collect())
        });
        let tags = op.get("tags").and_then(Value::as_array).into_iter().flatten();
        let tags = tags.filter_map(Value::as_str).map(String::from).collect();

        let own = op.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        let written = shared
            .iter()
            .enumerate()
            .map(|(index, raw)| (format!("{item_pointer}/parameters/{index}"), raw))
            .chain(own.iter().enumerate().map(|(index, raw)| (format!("{pointer}/parameters/{index}"), raw)));
        let mut params: Vec<Param> = Vec::new();
        for (param_pointer, raw) in written {
            let resolved = self.resolved(&param_pointer, raw)?;
            let location = match resolved.get("in").and_then(Value::as_str) {
                Some("path") => ParamLocation::Path,
                Some("query") => ParamLocation::Query,
                Some("header") => ParamLocation::Header,
                Some("cookie") => ParamLocation::Cookie,
                other => return Err(self.invalid(&param_pointer, format!("parameter in {other:?} is not supported"))),
            };
            let name = text(resolved, "name");
            // An operation's own parameter overrides a path-level one of the same name.
            params.retain(|p| !(p.name == name && p.location == location));
            params.push(Param {
                name,
                location,
                required: location == ParamLocation::Path
                    || resolved.get("required").and_then(Value::as_bool).unwrap_or(false),
                description: text(resolved, "description"),
                schema: schema_of(resolved),
                pointer: param_pointer,
            });
        }

        let body = match op.get("requestBody") {
            None => None,
            Some(raw) => {
                let body_pointer = format!("{pointer}/requestBody");
                let resolved = self.resolved(&body_pointer, raw)?;
                Some(RequestBody {
                    required: resolved.get("required").and_then(Value::as_bool).unwrap_or(false),
                    content: media_types(resolved),
                    pointer: body_pointer,
                })
            }
        };

        let mut responses = Vec::new();
        for (status, raw) in op.get("responses").and_then(Value::as_object).into_iter().flatten() {
            let Ok(code) = status.parse::<u16>() else { continue };
            let response_pointer = format!("{pointer}/responses/{}", pointer_token(status));
            let resolved = self.resolved(&response_pointer, raw)?;
            let mut headers = Vec::new();
            for (name, raw) in resolved.get("headers").and_then(Value::as_object).into_iter().flatten() {
                let header_pointer = format!("{response_pointer}/headers/{}", pointer_token(name));
                let header = self.resolved(&header_pointer, raw)?;
                headers.push(Header {
                    name: name.clone(),
                    required: header.get("required").and_then(Value::as_bool).unwrap_or(false),
                    description: text(header, "description"),
                    schema: schema_of(header),
                });
            }
            let mut links = Vec::new();
            for (name, raw) in resolved.get("links").and_then(Value::as_object).into_iter().flatten() {
                let link = self.resolved(&format!("{response_pointer}/links/{}", pointer_token(name)), raw)?;
                let Some(operation_id) = link.get("operationId").and_then(Value::as_str) else { continue };
                let parameters = link
                    .get("parameters")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                links.push(Link { name: name.clone(), operation_id: operation_id.to_string(), parameters });
            }
            responses.push(Response {
                status: code,
                description: text(resolved, "description"),
                content: media_types(resolved),
                headers,
                links,
                pointer: response_pointer,
            });
        }
        responses.sort_by_key(|r| r.status);

        Ok(Operation {
            id,
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            pointer: pointer.to_string(),
            summary: text(op, "summary"),
            description: text(op, "description"),
            tags,
            scopes,
            params,
            body,
            responses,
        })
    }
}

fn media_types(value: &Value) -> Vec<MediaType> {
    let content = value.get("content").and_then(Value::as_object).into_iter().flatten();
    content
        .map(|(media_type, media)| MediaType {
            media_type: media_type.clone(),
            schema: schema_of(media),
            example: media_example(media),
        })
        .collect()
}

/// The media type's `example`, or the value of its first named `examples` entry.
fn media_example(media: &Value) -> Option<Value> {
    if let Some(example) = media.get("example") {
        return Some(example.clone());
    }
    let examples = media.get("examples").and_then(Value::as_object)?;
    examples.values().next()?.get("value").cloned()
}

#[cfg(test)]
mod tests;
