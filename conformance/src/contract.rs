//! An OpenAPI 3.1 contract as the conformance engine reads it at test time: the raw
//! document plus a flat list of operations with every `$ref` to parameters, request
//! bodies, responses, headers and links resolved, and self-contained JSON Schemas for
//! validation.
//!
//! It is deliberately independent of `xtask`: the engine must be able to check any
//! contract handed to it (including tiny ones written inside a test) without the
//! generator's linting rules.

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

/// The HTTP methods an OpenAPI path item can declare, in the order the engine probes them.
pub const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Where a parameter is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// One declared parameter of an operation.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: ParamLocation,
    pub required: bool,
    /// The schema as written (possibly a `$ref`).
    pub schema: Value,
}

/// The declared request body of an operation.
#[derive(Debug, Clone)]
pub struct RequestBody {
    pub required: bool,
    /// Media types with their schemas, in document order.
    pub content: Vec<(String, Value)>,
}

impl RequestBody {
    /// The JSON media type and schema the engine sends, when the body accepts JSON.
    pub fn json(&self) -> Option<(&str, &Value)> {
        self.content.iter().find(|(media, _)| is_json_media_type(media)).map(|(media, schema)| (media.as_str(), schema))
    }
}

/// A declared response header.
#[derive(Debug, Clone)]
pub struct HeaderSpec {
    pub name: String,
    pub required: bool,
    pub schema: Value,
}

/// An OpenAPI link: the operation a response leads to and how its parameters are taken
/// from the response (runtime expressions such as `$response.body#/id`).
#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    pub operation_id: String,
    pub parameters: BTreeMap<String, String>,
}

/// One declared response of an operation.
#[derive(Debug, Clone)]
pub struct ResponseSpec {
    pub status: u16,
    /// Media types with their schemas (`Value::Null` when a media type has none).
    pub content: Vec<(String, Value)>,
    pub headers: Vec<HeaderSpec>,
    pub links: Vec<Link>,
}

/// One operation of a contract.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    /// Upper case (`GET`, `POST`, …).
    pub method: String,
    pub path: String,
    /// `None` for public operations; otherwise the scopes the bearer token must carry.
    pub scopes: Option<Vec<String>>,
    pub params: Vec<Param>,
    pub body: Option<RequestBody>,
    pub responses: Vec<ResponseSpec>,
}

impl Operation {
    pub fn is_secured(&self) -> bool {
        self.scopes.is_some()
    }

    pub fn response(&self, status: u16) -> Option<&ResponseSpec> {
        self.responses.iter().find(|r| r.status == status)
    }

    pub fn declares(&self, status: u16) -> bool {
        self.response(status).is_some()
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

impl Contract {
    /// Reads a contract from a YAML (or JSON) file.
    pub fn load(path: &Path) -> Result<Contract, ContractError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ContractError::Read { path: path.to_path_buf(), source })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Contract::from_yaml_str(&name, &text)
    }

    /// Reads a contract from YAML (or JSON) text; `name` is what reports call it.
    pub fn from_yaml_str(name: &str, text: &str) -> Result<Contract, ContractError> {
        let doc: Value =
            serde_yaml::from_str(text).map_err(|source| ContractError::Parse { name: name.to_string(), source })?;
        Contract::from_value(name, doc)
    }

    pub fn from_value(name: &str, doc: Value) -> Result<Contract, ContractError> {
        let mut contract = Contract { name: name.to_string(), doc, operations: Vec::new() };
        let paths = contract.doc.get("paths").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut operations = Vec::new();
        for (path, item) in &paths {
            let item_pointer = format!("/paths/{}", pointer_token(path));
            let item = contract.resolve(item).map_err(|m| contract.invalid(&item_pointer, m))?.clone();
            let shared = item.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
            for method in METHODS {
                let Some(op) = item.get(*method) else { continue };
                let pointer = format!("{item_pointer}/{method}");
                operations.push(contract.parse_operation(path, method, &pointer, op, &shared)?);
            }
        }
        let mut seen = BTreeSet::new();
        for op in &operations {
            if !seen.insert(op.id.clone()) {
                return Err(contract.invalid("/paths", format!("operationId {} is used twice", op.id)));
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

    fn invalid(&self, pointer: &str, message: impl Into<String>) -> ContractError {
        ContractError::Invalid { name: self.name.clone(), pointer: pointer.to_string(), message: message.into() }
    }

    /// Follows local `$ref`s (`#/components/...`) until a value without one.
    pub fn resolve<'a>(&'a self, value: &'a Value) -> Result<&'a Value, String> {
        let mut current = value;
        for _ in 0..32 {
            match current.get("$ref").and_then(Value::as_str) {
                Some(reference) => current = self.target(reference)?,
                None => return Ok(current),
            }
        }
        Err("reference cycle".into())
    }

    /// The value a local reference points at.
    pub fn target(&self, reference: &str) -> Result<&Value, String> {
        let pointer = reference
            .strip_prefix('#')
            .ok_or_else(|| format!("only local references are supported, found {reference}"))?;
        self.doc.pointer(pointer).ok_or_else(|| format!("dangling reference {reference}"))
    }

    /// A self-contained JSON Schema (2020-12) for `schema`: every component schema it
    /// reaches is copied under `$defs` and references are rewritten to point there, so
    /// the `jsonschema` crate can compile it without the rest of the document.
    pub fn standalone_schema(&self, schema: &Value) -> Value {
        pake_api_runtime::schema::standalone_schema(&self.doc, schema)
    }

    /// The schema of an operation's parameters as one JSON object, the way generated
    /// routers validate them: one property per parameter, required ones listed, nothing
    /// else allowed.
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

    fn parse_operation(
        &self,
        path: &str,
        method: &str,
        pointer: &str,
        op: &Value,
        shared: &[Value],
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

        let mut params: Vec<Param> = Vec::new();
        let own = op.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
        for (index, raw) in shared.iter().chain(own.iter()).enumerate() {
            let param_pointer = format!("{pointer}/parameters/{index}");
            let resolved = self.resolve(raw).map_err(|m| self.invalid(&param_pointer, m))?;
            let location = match resolved.get("in").and_then(Value::as_str) {
                Some("path") => ParamLocation::Path,
                Some("query") => ParamLocation::Query,
                Some("header") => ParamLocation::Header,
                // Cookies are not part of any PAKE contract; the engine does not send them.
                Some("cookie") => continue,
                other => return Err(self.invalid(&param_pointer, format!("parameter in {other:?} is not supported"))),
            };
            let name = resolved.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            // An operation's own parameter overrides a path-level one of the same name.
            params.retain(|p| !(p.name == name && p.location == location));
            params.push(Param {
                name,
                location,
                required: location == ParamLocation::Path
                    || resolved.get("required").and_then(Value::as_bool).unwrap_or(false),
                schema: resolved.get("schema").cloned().unwrap_or(Value::Bool(true)),
            });
        }

        let body = match op.get("requestBody") {
            None => None,
            Some(raw) => {
                let body_pointer = format!("{pointer}/requestBody");
                let resolved = self.resolve(raw).map_err(|m| self.invalid(&body_pointer, m))?;
                Some(RequestBody {
                    required: resolved.get("required").and_then(Value::as_bool).unwrap_or(false),
                    content: media_types(resolved),
                })
            }
        };

        let mut responses = Vec::new();
        if let Some(map) = op.get("responses").and_then(Value::as_object) {
            for (status, raw) in map {
                let response_pointer = format!("{pointer}/responses/{}", pointer_token(status));
                // `default` and ranges (`4XX`) are not modelled: every PAKE status is explicit.
                let Ok(status) = status.parse::<u16>() else { continue };
                let resolved = self.resolve(raw).map_err(|m| self.invalid(&response_pointer, m))?;
                let mut headers = Vec::new();
                for (name, raw) in resolved.get("headers").and_then(Value::as_object).into_iter().flatten() {
                    let header = self.resolve(raw).map_err(|m| self.invalid(&response_pointer, m))?;
                    headers.push(HeaderSpec {
                        name: name.clone(),
                        required: header.get("required").and_then(Value::as_bool).unwrap_or(false),
                        schema: header.get("schema").cloned().unwrap_or(Value::Bool(true)),
                    });
                }
                let mut links = Vec::new();
                for (name, raw) in resolved.get("links").and_then(Value::as_object).into_iter().flatten() {
                    let link = self.resolve(raw).map_err(|m| self.invalid(&response_pointer, m))?;
                    // Links by `operationRef` are not used by the contracts; they are skipped.
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
                responses.push(ResponseSpec { status, content: media_types(resolved), headers, links });
            }
        }
        responses.sort_by_key(|r| r.status);

        Ok(Operation {
            id,
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            scopes,
            params,
            body,
            responses,
        })
    }
}

fn media_types(value: &Value) -> Vec<(String, Value)> {
    value
        .get("content")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(media, spec)| (media.clone(), spec.get("schema").cloned().unwrap_or(Value::Null)))
        .collect()
}
