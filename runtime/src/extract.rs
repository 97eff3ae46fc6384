//! Request extraction for generated routers: bearer authentication and scope checks,
//! parameters coerced from their text form and validated against the contract's schema,
//! and JSON bodies checked for media type, size, syntax and schema.

use crate::{ApiError, DetailLocation, ErrorDetail, MAX_BODY_BYTES, Principal};
use axum::body::Body;
use axum::extract::RawPathParams;
use axum::extract::rejection::RawPathParamsRejection;
use axum::http::{StatusCode, header, request::Parts};
use jsonschema::Validator;
use jsonschema::error::ValidationErrorKind;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// Where a parameter is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLocation {
    Path,
    Query,
    Header,
}

impl ParamLocation {
    fn detail(self) -> DetailLocation {
        match self {
            ParamLocation::Path => DetailLocation::Path,
            ParamLocation::Query => DetailLocation::Query,
            ParamLocation::Header => DetailLocation::Header,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            ParamLocation::Path => "path parameter",
            ParamLocation::Query => "query parameter",
            ParamLocation::Header => "header",
        }
    }
}

/// How a parameter's text is turned into JSON before schema validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    Integer,
    Number,
    Boolean,
}

/// One declared parameter of an operation.
#[derive(Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub location: ParamLocation,
    pub required: bool,
    pub kind: ParamKind,
    /// The schema's default, as JSON text.
    pub default: Option<&'static str>,
}

/// Everything the runtime needs to validate one operation, emitted by the generator.
/// Schemas are self-contained JSON Schema 2020-12 documents, compiled on first use.
pub struct OperationSpec {
    pub operation_id: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    /// `None` for public operations; otherwise the scopes the token must carry.
    pub scopes: Option<&'static [&'static str]>,
    pub params: &'static [ParamSpec],
    pub params_schema: &'static str,
    pub body_schema: Option<&'static str>,
    validators: OnceLock<Result<Validators, String>>,
}

struct Validators {
    params: Validator,
    /// The body's validator and its schema, which also says where integers stand.
    body: Option<(Validator, Value)>,
}

fn parse_schema(schema: &str) -> Result<Value, String> {
    serde_json::from_str(schema).map_err(|e| e.to_string())
}

fn compile(value: &Value) -> Result<Validator, String> {
    jsonschema::draft202012::options().should_validate_formats(true).build(value).map_err(|e| e.to_string())
}

impl OperationSpec {
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        operation_id: &'static str,
        method: &'static str,
        path: &'static str,
        scopes: Option<&'static [&'static str]>,
        params: &'static [ParamSpec],
        params_schema: &'static str,
        body_schema: Option<&'static str>,
    ) -> Self {
        OperationSpec {
            operation_id,
            method,
            path,
            scopes,
            params,
            params_schema,
            body_schema,
            validators: OnceLock::new(),
        }
    }

    fn compiled(&self) -> &Result<Validators, String> {
        self.validators.get_or_init(|| {
            let body = match self.body_schema {
                Some(text) => {
                    let schema = parse_schema(text)?;
                    Some((compile(&schema)?, schema))
                }
                None => None,
            };
            Ok(Validators { params: compile(&parse_schema(self.params_schema)?)?, body })
        })
    }

    /// Compiles the operation's schemas now, so that a service can refuse to start with a
    /// schema that does not compile instead of answering 500 on the first request.
    pub fn warm(&self) -> Result<(), String> {
        self.compiled().as_ref().map(|_| ()).map_err(|message| format!("{}: {message}", self.operation_id))
    }

    fn validators(&self) -> Result<&Validators, ApiError> {
        self.compiled().as_ref().map_err(|message| {
            let error = std::io::Error::other(format!("schema of {} does not compile: {message}", self.operation_id));
            ApiError::internal(&error)
        })
    }

    fn param(&self, location: ParamLocation, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.location == location && p.name.eq_ignore_ascii_case(name))
    }
}

/// The token of an `Authorization` value in the `Bearer` scheme, which is named without
/// regard to case (RFC 7235 §2.1): `Bearer`, `bearer` and `BEARER` alike, then one or more
/// spaces, then a token, trimmed. `None` for any other scheme or an empty token. Every
/// place that reads bearer tokens (generated routers, the gateway's data plane) uses this.
pub fn bearer_token(value: &str) -> Option<&str> {
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Some(token.trim())
        }
        _ => None,
    }
}

/// Authenticates the bearer token of a secured operation with `authenticate`, then checks
/// the operation's scopes: no or malformed token → 401, missing scope → 403.
pub async fn authorize<F, Fut>(spec: &OperationSpec, parts: &Parts, authenticate: F) -> Result<Principal, ApiError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Principal, ApiError>>,
{
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized("missing bearer token"));
    };
    let value = value.to_str().map_err(|_| ApiError::unauthorized("authorization header is not valid text"))?;
    let Some(token) = bearer_token(value) else {
        return Err(ApiError::unauthorized("authorization header is not a bearer token"));
    };
    let principal = authenticate(token.to_string()).await?;
    for scope in spec.scopes.unwrap_or_default() {
        if !principal.has_scope(scope) {
            return Err(ApiError::forbidden(format!("this operation needs the scope {scope}")));
        }
    }
    Ok(principal)
}

/// Text → JSON by the parameter's declared type; `Err` says what was expected.
fn coerce(kind: ParamKind, text: &str) -> Result<Value, String> {
    match kind {
        ParamKind::String => Ok(Value::String(text.to_string())),
        ParamKind::Integer => integer_text(text).ok_or_else(|| format!("{text:?} is not an integer")),
        ParamKind::Number => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{text:?} is not a number")),
        ParamKind::Boolean => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
    }
}

/// The integer a parameter's text stands for: digits (`3`, `-3`), or any number JSON
/// Schema counts as an integer, which is one with a zero fraction (`3.0`, `3e0`,
/// `30e-1`), when a 64-bit integer holds it. `None` for fractions (`3.5`), text that is
/// not a number and values beyond 64 bits.
pub fn integer_text(text: &str) -> Option<Value> {
    if let Ok(integer) = text.parse::<i64>() {
        return Some(Value::from(integer));
    }
    if let Ok(integer) = text.parse::<u64>() {
        return Some(Value::from(integer));
    }
    // Only JSON number syntax (Rust's float parser also reads `inf`, `NaN`, `+1`, `.5`).
    let json_number = text.strip_prefix('-').unwrap_or(text).starts_with(|c: char| c.is_ascii_digit())
        && text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    if !json_number {
        return None;
    }
    let Ok(Value::Number(number)) = serde_json::from_str::<Value>(text) else { return None };
    let mut value = Value::Number(number);
    crate::schema::whole_numbers_as_integers(&serde_json::json!({"type": "integer"}), &mut value);
    (value.is_i64() || value.is_u64()).then_some(value)
}

/// Why a string holding U+0000 is refused: PostgreSQL's `text` and `jsonb` cannot store
/// it, so a store would fail on it; refusing it here answers the same on every backend.
const NUL_MESSAGE: &str = "must not contain the character U+0000 (NUL)";

fn invalid_parameters(problems: Vec<ErrorDetail>) -> ApiError {
    let first = &problems[0];
    let noun = match first.location {
        DetailLocation::Path => ParamLocation::Path.noun(),
        DetailLocation::Header => ParamLocation::Header.noun(),
        _ => ParamLocation::Query.noun(),
    };
    let message = format!("{noun} {}: {}", first.field.as_deref().unwrap_or_default(), first.message);
    ApiError::bad_request("invalid_parameter", message).with_details(problems)
}

/// For an operation that declares no parameters: any query parameter is unknown, and
/// refused as [`extract_params`] refuses unknown ones (400 naming each).
pub fn reject_query(spec: &OperationSpec, parts: &Parts) -> Result<(), ApiError> {
    debug_assert!(spec.params.is_empty(), "{} declares parameters; use extract_params", spec.operation_id);
    let problems: Vec<ErrorDetail> = form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .map(|(name, _)| ErrorDetail {
            location: DetailLocation::Query,
            field: Some(name.into_owned()),
            message: "unknown query parameter: this operation takes none".into(),
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(invalid_parameters(problems)) }
}

/// Collects an operation's parameters from the path, query and headers, applies
/// defaults, validates them against the contract and deserializes them into `P`.
/// Unknown and repeated query parameters are rejected.
pub fn extract_params<P: DeserializeOwned>(
    spec: &OperationSpec,
    parts: &Parts,
    path: Option<Result<RawPathParams, RawPathParamsRejection>>,
) -> Result<P, ApiError> {
    let validators = spec.validators()?;
    let mut values = Map::new();
    let mut problems: Vec<ErrorDetail> = Vec::new();
    let problem = |location: ParamLocation, name: &str, message: String| ErrorDetail {
        location: location.detail(),
        field: Some(name.to_string()),
        message,
    };

    let put = |values: &mut Map<String, Value>, problems: &mut Vec<ErrorDetail>, param: &ParamSpec, text: &str| {
        if text.contains('\0') {
            return problems.push(problem(param.location, param.name, NUL_MESSAGE.into()));
        }
        match coerce(param.kind, text) {
            Ok(value) => {
                values.insert(param.name.to_string(), value);
            }
            Err(message) => problems.push(problem(param.location, param.name, message)),
        }
    };

    match path {
        Some(Ok(raw)) => {
            for (name, text) in &raw {
                if let Some(param) = spec.param(ParamLocation::Path, name) {
                    put(&mut values, &mut problems, param, text);
                }
            }
        }
        Some(Err(rejection)) => {
            return Err(ApiError::bad_request("invalid_parameter", format!("path: {}", rejection.body_text())));
        }
        None => {}
    }

    for (name, text) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
        let Some(param) = spec.param(ParamLocation::Query, &name) else {
            problems.push(ErrorDetail {
                location: DetailLocation::Query,
                field: Some(name.to_string()),
                message: "unknown query parameter".into(),
            });
            continue;
        };
        if values.contains_key(param.name) {
            problems.push(ErrorDetail {
                location: DetailLocation::Query,
                field: Some(param.name.to_string()),
                message: "given more than once".into(),
            });
            continue;
        }
        put(&mut values, &mut problems, param, &text);
    }

    for param in spec.params.iter().filter(|p| p.location == ParamLocation::Header) {
        if let Some(value) = parts.headers.get(param.name) {
            match value.to_str() {
                Ok(text) => put(&mut values, &mut problems, param, text),
                Err(_) => problems.push(ErrorDetail {
                    location: DetailLocation::Header,
                    field: Some(param.name.to_string()),
                    message: "is not valid text".into(),
                }),
            }
        }
    }

    for param in spec.params {
        let already_reported = problems.iter().any(|p| p.field.as_deref() == Some(param.name));
        if values.contains_key(param.name) || already_reported {
            continue;
        }
        if let Some(default) = param.default.and_then(|text| serde_json::from_str(text).ok()) {
            values.insert(param.name.to_string(), default);
        }
    }

    let instance = Value::Object(values);
    for error in validators.params.iter_errors(&instance) {
        let pointer = error.instance_path().to_string();
        let name = match (pointer.split('/').nth(1), error.kind()) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, ValidationErrorKind::Required { property }) => property.as_str().unwrap_or_default().to_string(),
            _ => String::new(),
        };
        if problems.iter().any(|p| p.field.as_deref() == Some(name.as_str())) {
            continue;
        }
        let location = spec.params.iter().find(|p| p.name == name).map(|p| p.location).unwrap_or(ParamLocation::Query);
        let message = match error.kind() {
            ValidationErrorKind::Required { .. } => "is required".to_string(),
            _ => error.to_string(),
        };
        problems.push(ErrorDetail { location: location.detail(), field: Some(name), message });
    }

    if !problems.is_empty() {
        return Err(invalid_parameters(problems));
    }
    serde_json::from_value(instance).map_err(|e| ApiError::bad_request("invalid_parameter", format!("parameters: {e}")))
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads, parses and validates a JSON request body, then deserializes it into `B`.
/// Wrong media type → 415, too large → 413, empty or malformed → 400, schema
/// violations → 422 with one detail per violation.
pub async fn json_body<B: DeserializeOwned>(spec: &OperationSpec, parts: &Parts, body: Body) -> Result<B, ApiError> {
    let validators = spec.validators()?;
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if let Some(content_type) = content_type
        && !is_json(content_type)
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected content-type application/json, got {content_type}"),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared_length =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|error| {
        let limited = std::error::Error::source(&error)
            .is_some_and(|source| source.to_string().contains("length limit exceeded"));
        if limited {
            too_large()
        } else {
            ApiError::bad_request("unreadable_body", format!("could not read the request body: {error}"))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("missing_body", "this operation needs a JSON request body"));
    }
    if content_type.is_none() {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected content-type application/json",
        ));
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("request body is not valid JSON: {e}")))?;
    let mut details = Vec::new();
    nul_details(&value, &mut String::new(), &mut details);
    if let Some((validator, _)) = &validators.body {
        details.extend(validator.iter_errors(&value).take(100).map(|error| {
            let mut field = error.instance_path().to_string();
            if let ValidationErrorKind::Required { property } = error.kind() {
                field = format!("{field}/{}", property.as_str().unwrap_or_default());
            }
            ErrorDetail {
                location: DetailLocation::Body,
                field: Some(if field.is_empty() { "/".into() } else { field }),
                message: error.to_string(),
            }
        }));
    }
    if let Some(first) = details.first() {
        let message = format!(
            "the request body does not match the schema: {}: {}",
            first.field.as_deref().unwrap_or("/"),
            first.message
        );
        return Err(ApiError::unprocessable(message).with_details(details));
    }
    // Valid, so a whole number where the schema says integer may still be written `3.0`.
    let mut value = value;
    if let Some((_, schema)) = &validators.body {
        crate::schema::whole_numbers_as_integers(schema, &mut value);
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable(format!("the request body does not match the schema: {e}")))
}

/// One detail per string of `value` (member names included) that holds U+0000, naming it
/// by JSON pointer (a member name by the object that holds it). `pointer` is the path to
/// `value`, restored on return.
fn nul_details(value: &Value, pointer: &mut String, details: &mut Vec<ErrorDetail>) {
    let detail = |field: &str, message: String| ErrorDetail {
        location: DetailLocation::Body,
        field: Some(if field.is_empty() { "/".into() } else { field.to_string() }),
        message,
    };
    match value {
        Value::String(text) if text.contains('\0') => details.push(detail(pointer, NUL_MESSAGE.into())),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let length = pointer.len();
                pointer.push('/');
                pointer.push_str(&index.to_string());
                nul_details(item, pointer, details);
                pointer.truncate(length);
            }
        }
        Value::Object(members) => {
            for (name, member) in members {
                if name.contains('\0') {
                    details.push(detail(pointer, format!("member name {name:?} {NUL_MESSAGE}")));
                }
                let length = pointer.len();
                pointer.push('/');
                pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
                nul_details(member, pointer, details);
                pointer.truncate(length);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use serde_json::json;

    static BODY_OP: OperationSpec = OperationSpec::new(
        "putThing",
        "PUT",
        "/things/{name}",
        None,
        &[
            ParamSpec {
                name: "name",
                location: ParamLocation::Path,
                required: true,
                kind: ParamKind::String,
                default: None,
            },
            ParamSpec {
                name: "q",
                location: ParamLocation::Query,
                required: false,
                kind: ParamKind::String,
                default: None,
            },
        ],
        r#"{"type":"object","properties":{"name":{"type":"string"},"q":{"type":"string"}},"required":["name"]}"#,
        Some(
            r#"{"type":"object","additionalProperties":false,"properties":{
                "description":{"type":"string","maxLength":10},
                "tags":{"type":"array","items":{"type":"string"}},
                "metadata":{"type":"object","additionalProperties":{"type":"string"}}}}"#,
        ),
    );

    static NUMBERS_OP: OperationSpec = OperationSpec::new(
        "registerInstance",
        "POST",
        "/instances",
        None,
        &[ParamSpec {
            name: "limit",
            location: ParamLocation::Query,
            required: false,
            kind: ParamKind::Integer,
            default: None,
        }],
        r#"{"type":"object","properties":{"limit":{"type":"integer","minimum":1,"maximum":100}}}"#,
        Some(
            r#"{"type":"object","additionalProperties":false,"required":["port"],"properties":{
                "port":{"type":"integer","minimum":1,"maximum":65535},
                "ttl_seconds":{"type":["integer","null"],"exclusiveMinimum":0},
                "weight":{"type":"number"}}}"#,
        ),
    );

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Instance {
        port: u16,
        ttl_seconds: Option<std::num::NonZeroU64>,
        weight: Option<f64>,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Limit {
        limit: Option<u32>,
    }

    async fn instance(text: &str) -> Result<Instance, ApiError> {
        json_body::<Instance>(&NUMBERS_OP, &parts("/instances"), Body::from(text.to_string())).await
    }

    #[tokio::test]
    async fn whole_numbers_in_any_notation_decode_as_integers() {
        for text in [
            r#"{"port": 8080.0, "ttl_seconds": 30.0}"#,
            r#"{"port": 8080e0, "ttl_seconds": 3e1}"#,
            r#"{"port": 8.08E3, "ttl_seconds": 3.0e1}"#,
            r#"{"port": 80800e-1, "ttl_seconds": 300e-1}"#,
            r#"{"port": 8080, "ttl_seconds": 30}"#,
        ] {
            let decoded = instance(text).await.unwrap_or_else(|e| panic!("{text}: {}", e.message()));
            assert_eq!(
                decoded,
                Instance { port: 8080, ttl_seconds: std::num::NonZeroU64::new(30), weight: None },
                "{text}"
            );
        }
        let decoded = instance(r#"{"port": 1.0, "ttl_seconds": null, "weight": 2.0}"#).await.expect("accepted");
        assert_eq!(decoded, Instance { port: 1, ttl_seconds: None, weight: Some(2.0) });
    }

    #[tokio::test]
    async fn fractions_and_out_of_range_whole_numbers_are_refused_naming_the_field() {
        for (text, field) in [
            (r#"{"port": 8080.5}"#, "/port"),
            (r#"{"port": 80805e-1}"#, "/port"),
            (r#"{"port": 65536.0}"#, "/port"),
            (r#"{"port": 0e0}"#, "/port"),
            (r#"{"port": 1, "ttl_seconds": 0.5}"#, "/ttl_seconds"),
            (r#"{"port": 1, "ttl_seconds": 0.0}"#, "/ttl_seconds"),
        ] {
            let error = instance(text).await.expect_err(text);
            assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY, "{text}");
            assert_eq!(error.code(), "validation_failed", "{text}");
            assert_eq!(error.details()[0].field.as_deref(), Some(field), "{text}");
            assert!(error.message().contains(field), "{text}: {}", error.message());
        }
    }

    #[test]
    fn integer_parameters_take_every_integer_notation() {
        for (uri, limit) in [
            ("/instances?limit=3", 3),
            ("/instances?limit=3.0", 3),
            ("/instances?limit=3e0", 3),
            ("/instances?limit=30e-1", 3),
            ("/instances?limit=1.00E2", 100),
        ] {
            let params = extract_params::<Limit>(&NUMBERS_OP, &parts(uri), None)
                .unwrap_or_else(|e| panic!("{uri}: {}", e.message()));
            assert_eq!(params, Limit { limit: Some(limit) }, "{uri}");
        }
        for uri in [
            "/instances?limit=3.5",
            "/instances?limit=inf",
            "/instances?limit=NaN",
            "/instances?limit=.5e1",
            "/instances?limit=1e400",
            "/instances?limit=3.",
            "/instances?limit=101.0",
        ] {
            let error = extract_params::<Limit>(&NUMBERS_OP, &parts(uri), None).expect_err(uri);
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(error.details()[0].field.as_deref(), Some("limit"), "{uri}");
        }
    }

    static NO_PARAMS_OP: OperationSpec =
        OperationSpec::new("register", "POST", "/register", None, &[], r#"{"type":"object"}"#, None);

    fn parts(uri: &str) -> Parts {
        let request = Request::builder().uri(uri).header(header::CONTENT_TYPE, "application/json").body(()).unwrap();
        request.into_parts().0
    }

    async fn body_error(body: Value) -> ApiError {
        let parts = parts("/things/a");
        json_body::<Value>(&BODY_OP, &parts, Body::from(body.to_string())).await.expect_err("refused")
    }

    #[tokio::test]
    async fn a_nul_in_any_body_string_is_refused_with_its_pointer() {
        let cases = [
            (json!({"description": "a\u{0}b"}), "/description"),
            (json!({"tags": ["ok", "\u{0}"]}), "/tags/1"),
            (json!({"metadata": {"k/~": "x\u{0}"}}), "/metadata/k~1~0"),
            (json!({"metadata": {"a\u{0}b": "x"}}), "/metadata"),
        ];
        for (body, pointer) in cases {
            let error = body_error(body.clone()).await;
            assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(error.code(), "validation_failed");
            let detail = &error.details()[0];
            assert_eq!(detail.location, DetailLocation::Body);
            assert_eq!(detail.field.as_deref(), Some(pointer), "{body}");
            assert!(detail.message.contains("U+0000"), "{}", detail.message);
            assert!(error.message().contains(pointer) && error.message().contains("U+0000"), "{}", error.message());
        }
        // Alongside a schema violation, both are reported.
        let error = body_error(json!({"description": "\u{0}123456789012"})).await;
        assert_eq!(error.details().len(), 2, "{:?}", error.details());
        // Text without NUL (escaped or not elsewhere) passes.
        let parts = parts("/things/a");
        let fine = json!({"description": "a\\u0000b", "tags": ["\u{1}"]});
        json_body::<Value>(&BODY_OP, &parts, Body::from(fine.to_string())).await.expect("accepted");
    }

    #[test]
    fn a_nul_in_a_parameter_is_refused_with_400() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Params {
            name: String,
            q: Option<String>,
        }
        let error = extract_params::<Params>(&BODY_OP, &parts("/things/a?q=a%00b"), None).unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.code(), "invalid_parameter");
        assert_eq!(error.details()[0].field.as_deref(), Some("q"));
        assert_eq!(error.details()[0].location, DetailLocation::Query);
        assert!(error.message().contains("U+0000"), "{}", error.message());
    }

    #[test]
    fn operations_without_parameters_refuse_any_query_parameter() {
        assert!(reject_query(&NO_PARAMS_OP, &parts("/register")).is_ok());
        assert!(reject_query(&NO_PARAMS_OP, &parts("/register?")).is_ok());
        for (uri, name) in [("/register?foo=bar", "foo"), ("/register?flag", "flag"), ("/register?a=1&b=2", "a")] {
            let error = reject_query(&NO_PARAMS_OP, &parts(uri)).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(error.code(), "invalid_parameter");
            assert_eq!(error.details()[0].field.as_deref(), Some(name), "{uri}");
            assert!(error.message().contains(name), "{}", error.message());
        }
    }
}
