//! The engine against a small server written here for a small contract written here:
//! the correct server produces no failure at all, and each deliberately broken variant
//! (one bug at a time) is reported by the check meant to catch it, with a shrunk
//! reproduction printed as `curl` commands.
//!
//! The server validates requests with `pake-api-runtime`, as generated routers do, and
//! keeps items in memory.

use axum::Router;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use conformance::{Check, Config, ContractSource, Engine, Report, Target, TestServer};
use pake_api_runtime::{self as rt, ApiError, OperationSpec, ParamKind, ParamLocation, ParamSpec, Principal};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};

const CONTRACT: &str = r#"
openapi: 3.1.0
info: {title: Items, version: 1.0.0}
security: []
paths:
  /metrics:
    get:
      operationId: getMetrics
      security: []
      responses:
        '200':
          description: Prometheus exposition.
          content:
            text/plain:
              schema: {type: string}
  /quota:
    get:
      operationId: getQuota
      security: []
      responses:
        '200':
          description: The remaining quota.
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Quota'}
        '400': {$ref: '#/components/responses/Error'}
        '429': {$ref: '#/components/responses/TooManyRequests'}
  /items:
    get:
      operationId: listItems
      security: [{bearerAuth: ['items:read']}]
      parameters:
        - $ref: '#/components/parameters/Limit'
        - $ref: '#/components/parameters/Cursor'
        - name: color
          in: query
          required: false
          schema: {$ref: '#/components/schemas/Color'}
      responses:
        '200':
          description: One page of items.
          content:
            application/json:
              schema: {$ref: '#/components/schemas/ItemList'}
        '400': {$ref: '#/components/responses/Error'}
        '401': {$ref: '#/components/responses/Unauthorized'}
        '403': {$ref: '#/components/responses/Error'}
    post:
      operationId: createItem
      security: [{bearerAuth: ['items:write']}]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ItemSpec'}
      responses:
        '201':
          description: Created.
          headers:
            Location: {$ref: '#/components/headers/Location'}
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Item'}
          links:
            GetItem:
              operationId: getItem
              parameters:
                item_id: '$response.body#/id'
        '400': {$ref: '#/components/responses/Error'}
        '401': {$ref: '#/components/responses/Unauthorized'}
        '403': {$ref: '#/components/responses/Error'}
        '409': {$ref: '#/components/responses/Error'}
        '413': {$ref: '#/components/responses/Error'}
        '415': {$ref: '#/components/responses/Error'}
        '422': {$ref: '#/components/responses/Error'}
  /items/{item_id}:
    parameters:
      - $ref: '#/components/parameters/ItemId'
    get:
      operationId: getItem
      security: [{bearerAuth: ['items:read']}]
      responses:
        '200':
          description: The item.
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Item'}
        '400': {$ref: '#/components/responses/Error'}
        '401': {$ref: '#/components/responses/Unauthorized'}
        '403': {$ref: '#/components/responses/Error'}
        '404': {$ref: '#/components/responses/Error'}
    put:
      operationId: replaceItem
      security: [{bearerAuth: ['items:write']}]
      parameters:
        - name: If-Match
          in: header
          required: false
          schema: {type: string, maxLength: 8, pattern: '^"[1-9][0-9]{0,5}"$'}
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/ItemSpec'}
      responses:
        '200':
          description: The replaced item.
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Item'}
        '400': {$ref: '#/components/responses/Error'}
        '401': {$ref: '#/components/responses/Unauthorized'}
        '403': {$ref: '#/components/responses/Error'}
        '404': {$ref: '#/components/responses/Error'}
        '409': {$ref: '#/components/responses/Error'}
        '412': {$ref: '#/components/responses/Error'}
        '413': {$ref: '#/components/responses/Error'}
        '415': {$ref: '#/components/responses/Error'}
        '422': {$ref: '#/components/responses/Error'}
    delete:
      operationId: deleteItem
      security: [{bearerAuth: ['items:write']}]
      responses:
        '204': {description: Deleted.}
        '400': {$ref: '#/components/responses/Error'}
        '401': {$ref: '#/components/responses/Unauthorized'}
        '403': {$ref: '#/components/responses/Error'}
        '404': {$ref: '#/components/responses/Error'}
components:
  securitySchemes:
    bearerAuth: {type: http, scheme: bearer}
  parameters:
    Limit:
      name: limit
      in: query
      required: false
      schema: {type: integer, minimum: 1, maximum: 50, default: 10}
    Cursor:
      name: cursor
      in: query
      required: false
      schema: {type: string, minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$'}
    ItemId:
      name: item_id
      in: path
      required: true
      schema: {type: string, format: uuid}
  headers:
    Location:
      required: true
      schema: {type: string, format: uri-reference}
    RetryAfter:
      required: true
      schema: {type: integer, minimum: 0}
  responses:
    Error:
      description: An error.
      content:
        application/json:
          schema: {$ref: '#/components/schemas/Error'}
    Unauthorized:
      description: No valid token.
      headers:
        WWW-Authenticate:
          required: true
          schema: {type: string}
      content:
        application/json:
          schema: {$ref: '#/components/schemas/Error'}
    TooManyRequests:
      description: Slow down.
      headers:
        Retry-After: {$ref: '#/components/headers/RetryAfter'}
      content:
        application/json:
          schema: {$ref: '#/components/schemas/Error'}
  schemas:
    Error:
      type: object
      additionalProperties: false
      required: [code, message]
      properties:
        code: {type: string, pattern: '^[a-z][a-z0-9_]{1,63}$'}
        message: {type: string, minLength: 1}
        details:
          type: array
          items:
            type: object
            required: [location, message]
            properties:
              location: {type: string, enum: [body, path, query, header]}
              field: {type: string}
              message: {type: string}
        trace_id: {type: string}
    Color:
      type: string
      enum: [red, green, blue]
    ItemSpec:
      type: object
      additionalProperties: false
      required: [name, size]
      properties:
        name: {type: string, maxLength: 31, pattern: '^[a-z][a-z0-9-]{0,30}$'}
        size: {type: integer, minimum: 1, maximum: 100}
        color: {$ref: '#/components/schemas/Color'}
        note: {type: [string, 'null'], maxLength: 40}
        tags:
          type: array
          maxItems: 3
          uniqueItems: true
          items: {type: string, pattern: '^[a-z]{1,8}$'}
    Item:
      type: object
      additionalProperties: false
      required: [id, name, size, revision, created_at]
      properties:
        id: {type: string, format: uuid}
        name: {type: string, maxLength: 31, pattern: '^[a-z][a-z0-9-]{0,30}$'}
        size: {type: integer, minimum: 1, maximum: 100}
        color: {$ref: '#/components/schemas/Color'}
        note: {type: [string, 'null'], maxLength: 40}
        tags:
          type: array
          maxItems: 3
          items: {type: string}
        revision: {type: integer, minimum: 1}
        created_at: {type: string, format: date-time}
    ItemList:
      type: object
      additionalProperties: false
      required: [items, next_cursor]
      properties:
        items:
          type: array
          items: {$ref: '#/components/schemas/Item'}
        next_cursor: {type: [string, 'null']}
    Quota:
      type: object
      additionalProperties: false
      required: [remaining]
      properties:
        remaining: {type: integer, minimum: 0}
"#;

// How the server validates, as a generated router would describe it to the runtime.
const ITEM_SPEC_SCHEMA: &str = r#"{
  "type": "object", "additionalProperties": false, "required": ["name", "size"],
  "properties": {
    "name": {"type": "string", "maxLength": 31, "pattern": "^[a-z][a-z0-9-]{0,30}$"},
    "size": {"type": "integer", "minimum": 1, "maximum": 100},
    "color": {"type": "string", "enum": ["red", "green", "blue"]},
    "note": {"type": ["string", "null"], "maxLength": 40},
    "tags": {"type": "array", "maxItems": 3, "uniqueItems": true,
             "items": {"type": "string", "pattern": "^[a-z]{1,8}$"}}
  }
}"#;
const NO_PARAMS: &str = r#"{"type": "object", "properties": {}, "required": [], "additionalProperties": false}"#;
const LIST_PARAMS: &str = r#"{
  "type": "object", "additionalProperties": false, "required": [],
  "properties": {
    "limit": {"type": "integer", "minimum": 1, "maximum": 50},
    "cursor": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
    "color": {"type": "string", "enum": ["red", "green", "blue"]}
  }
}"#;
const ITEM_PARAMS: &str = r#"{
  "type": "object", "additionalProperties": false, "required": ["item_id"],
  "properties": {"item_id": {"type": "string", "format": "uuid"}}
}"#;
const REPLACE_PARAMS: &str = r#"{
  "type": "object", "additionalProperties": false, "required": ["item_id"],
  "properties": {
    "item_id": {"type": "string", "format": "uuid"},
    "If-Match": {"type": "string", "maxLength": 8, "pattern": "^\"[1-9][0-9]{0,5}\"$"}
  }
}"#;

const READ: &[&str] = &["items:read"];
const WRITE: &[&str] = &["items:write"];
const ITEM_ID: ParamSpec = ParamSpec {
    name: "item_id",
    location: ParamLocation::Path,
    required: true,
    kind: ParamKind::String,
    default: None,
};

static LIST: OperationSpec = OperationSpec::new(
    "listItems",
    "GET",
    "/items",
    Some(READ),
    &[
        ParamSpec {
            name: "limit",
            location: ParamLocation::Query,
            required: false,
            kind: ParamKind::Integer,
            default: Some("10"),
        },
        ParamSpec {
            name: "cursor",
            location: ParamLocation::Query,
            required: false,
            kind: ParamKind::String,
            default: None,
        },
        ParamSpec {
            name: "color",
            location: ParamLocation::Query,
            required: false,
            kind: ParamKind::String,
            default: None,
        },
    ],
    LIST_PARAMS,
    None,
);
// The operations without parameters refuse any query parameter, as generated routers do.
static METRICS: OperationSpec = OperationSpec::new("getMetrics", "GET", "/metrics", None, &[], NO_PARAMS, None);
static QUOTA: OperationSpec = OperationSpec::new("getQuota", "GET", "/quota", None, &[], NO_PARAMS, None);
static CREATE: OperationSpec =
    OperationSpec::new("createItem", "POST", "/items", Some(WRITE), &[], NO_PARAMS, Some(ITEM_SPEC_SCHEMA));
static GET_ITEM: OperationSpec =
    OperationSpec::new("getItem", "GET", "/items/{item_id}", Some(READ), &[ITEM_ID], ITEM_PARAMS, None);
static REPLACE: OperationSpec = OperationSpec::new(
    "replaceItem",
    "PUT",
    "/items/{item_id}",
    Some(WRITE),
    &[
        ITEM_ID,
        ParamSpec {
            name: "If-Match",
            location: ParamLocation::Header,
            required: false,
            kind: ParamKind::String,
            default: None,
        },
    ],
    REPLACE_PARAMS,
    Some(ITEM_SPEC_SCHEMA),
);
static DELETE: OperationSpec =
    OperationSpec::new("deleteItem", "DELETE", "/items/{item_id}", Some(WRITE), &[ITEM_ID], ITEM_PARAMS, None);

/// One deliberate bug at a time, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// (a) getItem answers 500.
    ServerError,
    /// (b) listItems answers 418, which the contract does not declare.
    UndeclaredStatus,
    /// (c) getQuota answers text/html.
    WrongContentType,
    /// (d) getQuota answers a negative `remaining`.
    BodyViolatesSchema,
    /// (e) createItem answers 201 without Location.
    CreatedWithoutLocation,
    /// (f) getQuota answers 429 without Retry-After.
    RateLimitedWithoutRetryAfter,
    /// (g) createItem accepts any body.
    AcceptsInvalidInput,
    /// (h) listItems does not authenticate.
    NoAuthentication,
    /// (i) /items/{item_id} answers 404 to methods it does not declare.
    NotFoundForUnknownMethod,
    /// (j) deleteItem answers 204 and keeps the item.
    DeleteDoesNotDelete,
    /// (k) createItem refuses a whole number written as a float (`"size": 3.0`), which the
    /// schema's `integer` admits, as a typed decode without normalisation would.
    RefusesWholeFloats,
    /// (l) replaceItem keeps the item's old `tags` whatever it is sent (one `continue` in
    /// an update loop): a lost write that only a read-back with `tags` sent can show.
    ReplaceIgnoresTags,
}

struct App {
    bug: Bug,
    items: Mutex<Vec<Map<String, Value>>>,
}

impl App {
    async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
        if token == "good" {
            Ok(Principal {
                subject: "tester".into(),
                tenant: None,
                scopes: vec!["items:read".into(), "items:write".into()],
            })
        } else {
            Err(ApiError::unauthorized("unknown token"))
        }
    }

    fn items(&self) -> std::sync::MutexGuard<'_, Vec<Map<String, Value>>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn json(status: u16, body: &Value, headers: Vec<(&'static str, String)>) -> Response {
    rt::json_response(status, "application/json", body, headers)
}

fn position(items: &[Map<String, Value>], id: &str) -> Result<usize, ApiError> {
    items.iter().position(|item| item["id"] == id).ok_or_else(|| ApiError::not_found("no such item"))
}

async fn metrics(State(app): State<Arc<App>>, request: Request) -> Response {
    if let Err(error) = rt::reject_query(&METRICS, &request.into_parts().0) {
        return error.into_response();
    }
    let count = app.items().len();
    rt::text_response(200, "text/plain", format!("items_total {count}\n"), Vec::new())
}

async fn quota(State(app): State<Arc<App>>, request: Request) -> Response {
    if let Err(error) = rt::reject_query(&QUOTA, &request.into_parts().0) {
        return error.into_response();
    }
    match app.bug {
        Bug::WrongContentType => (StatusCode::OK, [("content-type", "text/html")], "<p>plenty</p>").into_response(),
        Bug::BodyViolatesSchema => json(200, &json!({"remaining": -1}), Vec::new()),
        Bug::RateLimitedWithoutRetryAfter => {
            json(429, &json!({"code": "rate_limited", "message": "slow down"}), Vec::new())
        }
        _ => json(200, &json!({"remaining": 10}), Vec::new()),
    }
}

async fn list(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    rt::respond(
        async {
            if app.bug != Bug::NoAuthentication {
                rt::authorize(&LIST, &parts, |t| app.authenticate(t)).await?;
            }
            let params: Map<String, Value> = rt::extract_params(&LIST, &parts, None)?;
            if app.bug == Bug::UndeclaredStatus {
                return Err(ApiError::new(StatusCode::IM_A_TEAPOT, "teapot", "short and stout"));
            }
            let limit = params.get("limit").and_then(Value::as_u64).unwrap_or(10) as usize;
            let start = match params.get("cursor").and_then(Value::as_str) {
                None => 0,
                Some(cursor) => cursor
                    .strip_prefix("at")
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| ApiError::bad_request("invalid_cursor", "the cursor is not one this server gave"))?,
            };
            let color = params.get("color");
            let items: Vec<Value> = app
                .items()
                .iter()
                .filter(|item| color.is_none_or(|c| item.get("color") == Some(c)))
                .map(|item| Value::Object(item.clone()))
                .collect();
            let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
            let next = (start + limit < items.len()).then(|| format!("at{}", start + limit));
            Ok(json(200, &json!({"items": page, "next_cursor": next}), Vec::new()))
        }
        .await,
    )
}

async fn create(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    rt::respond(
        async {
            rt::authorize(&CREATE, &parts, |t| app.authenticate(t)).await?;
            rt::reject_query(&CREATE, &parts)?;
            let spec: Map<String, Value> = if app.bug == Bug::AcceptsInvalidInput {
                // The bug: whatever arrives is made into an item.
                let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let loose: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let name =
                    loose["name"].as_str().filter(|n| n.len() < 31 && n.starts_with(|c: char| c.is_ascii_lowercase()));
                let name = name.map_or_else(|| format!("item-{}", uuid::Uuid::new_v4().simple()), String::from);
                let mut spec = Map::new();
                spec.insert("name".into(), Value::String(name[..name.len().min(31)].to_string()));
                spec.insert("size".into(), json!(loose["size"].as_i64().unwrap_or(1).clamp(1, 100)));
                spec
            } else if app.bug == Bug::RefusesWholeFloats {
                let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
                let sent: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if sent["size"].is_f64() {
                    return Err(ApiError::unprocessable("invalid type: floating point, expected u8"));
                }
                rt::json_body(&CREATE, &parts, axum::body::Body::from(bytes)).await?
            } else {
                rt::json_body(&CREATE, &parts, body).await?
            };
            let mut items = app.items();
            if items.iter().any(|item| item["name"] == spec["name"]) {
                return Err(ApiError::conflict("an item with this name exists"));
            }
            let id = uuid::Uuid::new_v4().to_string();
            let mut item = spec;
            item.insert("id".into(), Value::String(id.clone()));
            item.insert("revision".into(), json!(1));
            item.insert("created_at".into(), json!("2025-01-15T10:00:00Z"));
            items.push(item.clone());
            let headers = match app.bug {
                Bug::CreatedWithoutLocation => Vec::new(),
                _ => vec![("location", format!("/items/{id}"))],
            };
            Ok(json(201, &Value::Object(item), headers))
        }
        .await,
    )
}

async fn read(
    State(app): State<Arc<App>>,
    path: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    rt::respond(
        async {
            rt::authorize(&GET_ITEM, &parts, |t| app.authenticate(t)).await?;
            let params: Map<String, Value> = rt::extract_params(&GET_ITEM, &parts, Some(path))?;
            if app.bug == Bug::ServerError {
                let cause = std::io::Error::other("the store fell over");
                return Err(ApiError::internal(&cause));
            }
            let items = app.items();
            let index = position(&items, params["item_id"].as_str().unwrap_or_default())?;
            Ok(json(200, &Value::Object(items[index].clone()), Vec::new()))
        }
        .await,
    )
}

async fn replace(
    State(app): State<Arc<App>>,
    path: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    rt::respond(
        async {
            rt::authorize(&REPLACE, &parts, |t| app.authenticate(t)).await?;
            let params: Map<String, Value> = rt::extract_params(&REPLACE, &parts, Some(path))?;
            let spec: Map<String, Value> = rt::json_body(&REPLACE, &parts, body).await?;
            let mut items = app.items();
            let index = position(&items, params["item_id"].as_str().unwrap_or_default())?;
            let revision = items[index]["revision"].as_u64().unwrap_or(1);
            if let Some(expected) = params.get("If-Match").and_then(Value::as_str)
                && expected != format!("\"{revision}\"")
            {
                return Err(ApiError::precondition_failed(format!("the revision is {revision}")));
            }
            if items.iter().enumerate().any(|(i, item)| i != index && item["name"] == spec["name"]) {
                return Err(ApiError::conflict("an item with this name exists"));
            }
            let mut item = spec;
            for key in ["id", "created_at"] {
                item.insert(key.into(), items[index][key].clone());
            }
            if app.bug == Bug::ReplaceIgnoresTags {
                match items[index].get("tags") {
                    Some(tags) => item.insert("tags".into(), tags.clone()),
                    None => item.remove("tags"),
                };
            }
            item.insert("revision".into(), json!(revision + 1));
            items[index] = item.clone();
            Ok(json(200, &Value::Object(item), Vec::new()))
        }
        .await,
    )
}

async fn remove(
    State(app): State<Arc<App>>,
    path: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    rt::respond(
        async {
            rt::authorize(&DELETE, &parts, |t| app.authenticate(t)).await?;
            let params: Map<String, Value> = rt::extract_params(&DELETE, &parts, Some(path))?;
            let mut items = app.items();
            let index = position(&items, params["item_id"].as_str().unwrap_or_default())?;
            if app.bug != Bug::DeleteDoesNotDelete {
                items.remove(index);
            }
            Ok(rt::empty_response(204, Vec::new()))
        }
        .await,
    )
}

fn router(bug: Bug) -> Router {
    let app = Arc::new(App { bug, items: Mutex::new(Vec::new()) });
    let item = get(read).put(replace).delete(remove);
    let item = match bug {
        Bug::NotFoundForUnknownMethod => item.fallback(rt::not_found),
        _ => item.fallback(rt::method_not_allowed("DELETE, GET, HEAD, PUT")),
    };
    Router::new()
        .route("/metrics", get(metrics).fallback(rt::method_not_allowed("GET, HEAD")))
        .route("/quota", get(quota).fallback(rt::method_not_allowed("GET, HEAD")))
        .route("/items", get(list).post(create).fallback(rt::method_not_allowed("GET, HEAD, POST")))
        .route("/items/{item_id}", item)
        .fallback(rt::not_found)
        .with_state(app)
}

fn config() -> Config {
    Config { cases_per_operation: 10, sequences_per_resource: 2, ..Config::default() }
}

async fn run(bug: Bug, config: &Config) -> Report {
    let server = TestServer::start(router(bug)).await.expect("server starts");
    let target = Target::new(server.url()).with_token("good");
    let engine = Engine::new(ContractSource::text("items.yaml", CONTRACT), target).expect("the contract loads");
    let report = engine.run(config).await;
    server.stop().await;
    report
}

fn describe(report: &Report) -> String {
    report.failures().iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n")
}

/// Runs the engine against the server with `bug` and asserts it reports `check` for
/// `operation`; returns the report for more specific assertions.
async fn caught(bug: Bug, operation: &str, check: Check) -> Report {
    let report = run(bug, &config()).await;
    let found = report.failures().iter().any(|f| f.operation == operation && f.check == check);
    assert!(found, "{bug:?}: expected {check} on {operation}, got:\n{}", describe(&report));
    report
}

#[tokio::test]
async fn a_correct_server_has_no_failures_and_full_coverage() {
    let report = run(Bug::None, &config()).await;
    report.assert_ok();
    report.require_positive_coverage();
    report.require_property_coverage();
    let table = report.coverage_table();
    assert!(table.contains("(100.0 %)"), "{table}");
    let properties = &report.properties["replaceItem"];
    assert_eq!(properties.labels, ["header If-Match", "body color", "body note", "body tags"], "{table}");
    for (operation, coverage) in &report.coverage {
        assert!(table.contains(operation.as_str()), "{table}");
        // The coverage phase's cases come before the 10 random ones.
        assert!(coverage.positive > 10, "{operation}: {table}");
    }
    let coverage = |id: &str| report.coverage_of(id).expect("an operation of the contract");
    assert!(coverage("createItem").negative > 0 && coverage("listItems").negative > 0, "{table}");
    assert_eq!(coverage("getItem").auth, 2, "{table}");
    assert_eq!(coverage("getMetrics").auth, 0, "{table}");
    for operation in ["createItem", "getItem", "replaceItem", "listItems", "deleteItem"] {
        assert!(coverage(operation).stateful > 0, "{operation} is in a sequence: {table}");
    }
    assert!(report.method_probes >= 5, "{table}");
}

#[tokio::test]
async fn a_server_error_is_caught() {
    caught(Bug::ServerError, "getItem", Check::NoServerError).await;
}

#[tokio::test]
async fn an_undeclared_status_is_caught() {
    caught(Bug::UndeclaredStatus, "listItems", Check::StatusDeclared).await;
}

#[tokio::test]
async fn a_wrong_content_type_is_caught() {
    caught(Bug::WrongContentType, "getQuota", Check::ContentTypeDeclared).await;
}

#[tokio::test]
async fn a_body_violating_the_schema_is_caught() {
    let report = caught(Bug::BodyViolatesSchema, "getQuota", Check::BodyMatchesSchema).await;
    let failure = report.failures().iter().find(|f| f.check == Check::BodyMatchesSchema).expect("the failure");
    assert!(failure.message.contains("/remaining"), "{failure}");
}

#[tokio::test]
async fn created_without_location_is_caught() {
    caught(Bug::CreatedWithoutLocation, "createItem", Check::LocationOnCreated).await;
}

#[tokio::test]
async fn rate_limited_without_retry_after_is_caught() {
    let report = caught(Bug::RateLimitedWithoutRetryAfter, "getQuota", Check::RetryAfterPresent).await;
    // A declared 429 is something the server's state may explain, so valid data getting
    // it is not a failure of its own.
    assert!(!report.failed_checks().contains(&Check::PositiveAccepted), "{}", describe(&report));
}

#[tokio::test]
async fn invalid_input_accepted_is_caught_and_shrunk_to_one_request() {
    let report = caught(Bug::AcceptsInvalidInput, "createItem", Check::NegativeRejected).await;
    let failure = report.failures().iter().find(|f| f.check == Check::NegativeRejected).expect("the failure");
    assert_eq!(failure.reproduction.len(), 1, "{failure}");
    assert!(failure.reproduction[0].starts_with("curl -sS -i -X POST 'http://127.0.0.1:"), "{failure}");
    assert!(failure.reproduction[0].contains("$PAKE_TOKEN"), "the token is never printed: {failure}");
}

#[tokio::test]
async fn a_whole_float_refused_where_an_integer_is_declared_is_caught() {
    let report = caught(Bug::RefusesWholeFloats, "createItem", Check::PositiveAccepted).await;
    let failure = report.failures().iter().find(|f| f.check == Check::PositiveAccepted).expect("the failure");
    let whole_float = sends_size_as_whole_float(&failure.reproduction[0]);
    assert!(whole_float, "the reproduction sends size as a whole float: {failure}");
}

/// Whether a curl command's body has `"size":` followed by a whole number written as a
/// float (`3.0`, `3e0`, `30e-1`, `3.0E0`).
fn sends_size_as_whole_float(command: &str) -> bool {
    let Some((_, after)) = command.split_once("\"size\":") else { return false };
    let number: String = after.chars().take_while(|c| c.is_ascii_digit() || "-+.eE".contains(*c)).collect();
    number.contains(['.', 'e', 'E']) && number.parse::<f64>().is_ok_and(|x| x.fract() == 0.0)
}

#[tokio::test]
async fn a_secured_operation_answering_without_a_token_is_caught() {
    let report = caught(Bug::NoAuthentication, "listItems", Check::AuthenticationRequired).await;
    let failure = report.failures().iter().find(|f| f.check == Check::AuthenticationRequired).expect("the failure");
    assert!(!failure.reproduction[0].contains("Authorization"), "{failure}");
}

#[tokio::test]
async fn not_found_for_an_undeclared_method_is_caught() {
    let report = run(Bug::NotFoundForUnknownMethod, &config()).await;
    let probed: Vec<&str> =
        report.failures().iter().filter(|f| f.check == Check::MethodNotAllowed).map(|f| f.operation.as_str()).collect();
    assert_eq!(probed, ["POST /items/{item_id}", "PATCH /items/{item_id}"], "{}", describe(&report));
}

#[tokio::test]
async fn a_delete_that_does_not_delete_is_caught_and_shrunk_to_three_requests() {
    let report = caught(Bug::DeleteDoesNotDelete, "getItem", Check::GoneAfterDelete).await;
    let failure = report.failures().iter().find(|f| f.check == Check::GoneAfterDelete).expect("the failure");
    // Read, update and list are not needed to show the bug: the shrunk sequence is
    // create, delete, read.
    let methods: Vec<&str> =
        failure.reproduction.iter().map(|curl| curl.split_whitespace().nth(4).unwrap_or_default()).collect();
    assert_eq!(methods, ["POST", "DELETE", "GET"], "{failure}");
    assert!(failure.case.starts_with("sequence create (createItem) → delete (deleteItem)"), "{failure}");
}

#[tokio::test]
async fn runs_are_deterministic_for_a_seed() {
    let config = Config { stateful: false, ..config() };
    let first = run(Bug::AcceptsInvalidInput, &config).await;
    let second = run(Bug::AcceptsInvalidInput, &config).await;
    let reproduction = |report: &Report| -> Vec<String> {
        report
            .failures()
            .iter()
            .flat_map(|f| {
                f.reproduction.iter().map(|c| c.split_once("/items").map_or(c.clone(), |(_, rest)| rest.to_string()))
            })
            .collect()
    };
    assert!(!reproduction(&first).is_empty());
    assert_eq!(reproduction(&first), reproduction(&second));
}

#[tokio::test]
async fn without_a_token_only_authentication_runs_and_coverage_can_be_required() {
    let server = TestServer::start(router(Bug::None)).await.expect("server starts");
    let engine = Engine::new(ContractSource::text("items.yaml", CONTRACT), Target::new(server.url()))
        .expect("the contract loads");
    let report = engine.run(&config()).await;
    server.stop().await;
    report.assert_ok();
    assert_eq!(report.missing_positive_coverage(), ["listItems", "createItem", "getItem", "replaceItem", "deleteItem"]);
    let required = std::panic::catch_unwind(|| report.require_positive_coverage());
    assert!(required.is_err(), "operations without positive cases make require_positive_coverage fail");
    let missing = report.missing_property_coverage();
    assert!(missing.iter().any(|(id, what)| id == "replaceItem" && what.iter().any(|w| w.starts_with("body tags"))));
    let required = std::panic::catch_unwind(|| report.require_property_coverage());
    assert!(required.is_err(), "properties never sent make require_property_coverage fail");
}

#[tokio::test]
async fn an_update_that_ignores_an_optional_field_is_caught_by_the_default_run() {
    // The default settings, as CI runs them: the coverage phase's complete sequence sends
    // every optional property in the update and reads it back, whatever the random draws.
    let report = run(Bug::ReplaceIgnoresTags, &Config::default()).await;
    let failure = report
        .failures()
        .iter()
        .find(|f| f.check == Check::FieldsEchoed && f.message.contains("tags was sent as"))
        .unwrap_or_else(|| panic!("the lost write of tags is reported:\n{}", describe(&report)));
    assert!(failure.reproduction.iter().any(|curl| curl.contains("-X PUT")), "{failure}");
}

#[tokio::test]
async fn the_coverage_phase_sends_every_enum_value_and_bound() {
    let server = TestServer::start(router(Bug::None)).await.expect("server starts");
    let target = Target::new(server.url()).with_token("good");
    let engine = Engine::new(ContractSource::text("items.yaml", CONTRACT), target).expect("the contract loads");
    let report = engine.run(&Config { cases_per_operation: 0, stateful: false, ..config() }).await;
    server.stop().await;
    report.assert_ok();
    // Without random cases, coverage alone sends each optional property both ways.
    report.require_property_coverage();
    let create = report.coverage_of("createItem").expect("createItem");
    // complete, minimal, 3 colours, size at 1 / 100 / as a float, note at 0 and 40
    // characters, tags empty (and full when the complete draw has 3 distinct tags);
    // negatives: size 0 and 101, note of 41, 4 tags.
    assert!(create.positive >= 10, "{}", report.coverage_table());
    assert!(create.negative >= 4, "{}", report.coverage_table());
    let limit = report.coverage_of("listItems").expect("listItems");
    assert!(limit.positive >= 5 && limit.negative >= 2, "{}", report.coverage_table());
}
