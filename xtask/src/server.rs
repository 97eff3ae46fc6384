//! Generates the server side of a contract: per operation a request type and a response
//! enum that implements `IntoResponse` (one variant per status the implementation answers
//! itself — successes, and errors whose body is not the shared `Error`, which are
//! `ApiError`s — headers as fields); one trait with one async method per operationId; and
//! a `router` function that authenticates, validates parameters and bodies against the
//! contract's schemas (written as JSON files beside the code and included with
//! `include_str!`), calls the trait and answers undeclared methods with 405 + `Allow`.
//!
//! The models are not generated here: the server reuses the `types` module of the
//! progenitor client crate of the same contract, so both sides share one set of models.

use crate::contract::{Contract, ContractInfo, Operation, ParamLocation, RequestBody, Response};
use crate::lint::component_name;
use heck::{ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};
use serde_json::Value;
use std::collections::BTreeMap;

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
    "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "static",
    "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while", "gen", "abstract", "become", "box",
    "do", "final", "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try",
];

/// A field or method name from a contract name (`If-Match` → `if_match`, `type` → `r#type`).
pub fn field_ident(name: &str) -> Ident {
    let snake = name.to_snake_case();
    if RUST_KEYWORDS.contains(&snake.as_str()) {
        Ident::new_raw(&snake, Span::call_site())
    } else {
        Ident::new(&snake, Span::call_site())
    }
}

/// A field name for an HTTP header (`ETag` → `etag`, `X-Pake-Index` → `x_pake_index`).
pub fn header_ident(name: &str) -> Ident {
    field_ident(&name.to_ascii_lowercase())
}

fn type_ident(name: &str) -> Ident {
    Ident::new(&name.to_upper_camel_case(), Span::call_site())
}

/// The response enum variant for a status code.
pub fn variant_name(status: u16) -> String {
    match status {
        200 => "Ok".into(),
        201 => "Created".into(),
        202 => "Accepted".into(),
        204 => "NoContent".into(),
        301 => "MovedPermanently".into(),
        302 => "Found".into(),
        304 => "NotModified".into(),
        400 => "BadRequest".into(),
        401 => "Unauthorized".into(),
        403 => "Forbidden".into(),
        404 => "NotFound".into(),
        405 => "MethodNotAllowed".into(),
        406 => "NotAcceptable".into(),
        408 => "RequestTimeout".into(),
        409 => "Conflict".into(),
        410 => "Gone".into(),
        412 => "PreconditionFailed".into(),
        413 => "PayloadTooLarge".into(),
        415 => "UnsupportedMediaType".into(),
        422 => "UnprocessableEntity".into(),
        428 => "PreconditionRequired".into(),
        429 => "TooManyRequests".into(),
        500 => "InternalServerError".into(),
        501 => "NotImplemented".into(),
        502 => "BadGateway".into(),
        503 => "ServiceUnavailable".into(),
        504 => "GatewayTimeout".into(),
        other => format!("Status{other}"),
    }
}

fn doc_attr(text: &str) -> TokenStream {
    let lines: Vec<TokenStream> = text
        .trim()
        .lines()
        .map(|line| {
            let line = format!(" {}", line.trim_end());
            quote!(#[doc = #line])
        })
        .collect();
    quote!(#(#lines)*)
}

fn inner_doc_attr(text: &str) -> TokenStream {
    let lines: Vec<TokenStream> = text
        .trim()
        .lines()
        .map(|line| {
            let line = format!(" {}", line.trim_end());
            quote!(#![doc = #line])
        })
        .collect();
    quote!(#(#lines)*)
}

/// The server-side Rust type of a parameter.
fn param_type(contract: &Contract, schema: &Value) -> TokenStream {
    if let Some(name) = component_name(schema) {
        let ident = type_ident(name);
        return quote!(types::#ident);
    }
    let resolved = contract.resolve(schema).unwrap_or(schema);
    match resolved.get("type").and_then(Value::as_str) {
        Some("integer") => {
            if resolved.get("minimum").and_then(Value::as_f64).is_some_and(|m| m >= 0.0) {
                quote!(u64)
            } else {
                quote!(i64)
            }
        }
        Some("number") => quote!(f64),
        Some("boolean") => quote!(bool),
        _ => match resolved.get("format").and_then(Value::as_str) {
            Some("uuid") => quote!(uuid::Uuid),
            Some("date-time") => quote!(chrono::DateTime<chrono::Utc>),
            _ => quote!(String),
        },
    }
}

fn param_kind(contract: &Contract, schema: &Value) -> TokenStream {
    let resolved = contract.resolve(schema).unwrap_or(schema);
    match resolved.get("type").and_then(Value::as_str) {
        Some("integer") => quote!(rt::ParamKind::Integer),
        Some("number") => quote!(rt::ParamKind::Number),
        Some("boolean") => quote!(rt::ParamKind::Boolean),
        _ => quote!(rt::ParamKind::String),
    }
}

fn param_default(contract: &Contract, schema: &Value) -> Option<Value> {
    let resolved = contract.resolve(schema).unwrap_or(schema);
    schema.get("default").or_else(|| resolved.get("default")).cloned()
}

fn header_type(schema: &Value) -> TokenStream {
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") if schema.get("minimum").and_then(Value::as_f64).is_some_and(|m| m >= 0.0) => quote!(u64),
        Some("integer") => quote!(i64),
        _ => quote!(String),
    }
}

/// Whether a response body is JSON (typed by a component schema) or text.
enum BodyKind {
    None,
    Json(TokenStream),
    Text,
}

fn body_kind(response: &Response) -> BodyKind {
    match response.content.first() {
        None => BodyKind::None,
        Some(content) if content.media_type.starts_with("text/") => BodyKind::Text,
        Some(content) => match component_name(&content.schema) {
            Some(name) => {
                let ident = type_ident(name);
                BodyKind::Json(quote!(types::#ident))
            }
            None => BodyKind::Json(quote!(::serde_json::Value)),
        },
    }
}

/// The JSON Schema of all of an operation's parameters, as one object keyed by name.
fn params_schema(contract: &Contract, op: &Operation) -> Value {
    contract.standalone_schema(&contract.params_schema(op))
}

/// Whether an implementation answers `response` through the operation's response enum:
/// every non-error status, and errors whose body is not the contract's shared `Error`
/// (a health check's 503 carries the health report). Errors with the `Error` body are
/// `ApiError`s, which the router renders.
fn returned_by_implementations(response: &Response) -> bool {
    response.status < 400 || response.content.first().is_none_or(|c| component_name(&c.schema) != Some("Error"))
}

/// The schema of a request body (the linter has checked it is one `application/json`).
fn request_schema(body: &RequestBody) -> &Value {
    body.json().map_or(&Value::Bool(true), |(_, schema)| schema)
}

/// Where the JSON Schemas the router validates with are written, relative to the crate.
pub const SCHEMA_DIR: &str = "schemas";

/// The generated server code of one contract.
pub struct Server {
    /// The crate's code (`src/server.rs`).
    pub tokens: TokenStream,
    /// Self-contained JSON Schemas by file name under [`SCHEMA_DIR`]: per operation its
    /// parameters (`<operationId>.params.json`) and its body (`<operationId>.body.json`),
    /// included by the code with `include_str!`.
    pub schemas: BTreeMap<String, Value>,
}

/// Generates the server crate's code for one contract.
pub fn generate(info: &ContractInfo, contract: &Contract, client_crate: &str) -> Server {
    let mut schemas = BTreeMap::new();
    let client_crate = Ident::new(&client_crate.replace('-', "_"), Span::call_site());
    let trait_ident = Ident::new(info.trait_name, Span::call_site());
    let title = contract.doc.pointer("/info/title").and_then(Value::as_str).unwrap_or_default();
    let crate_doc = inner_doc_attr(&format!(
        "Server side of the {title} contract (`openapi/{}`): the [`{}`] trait, one method per operation, \
         and [`router`], which validates requests against the contract before calling it.",
        info.file, info.trait_name
    ));
    let has_secured = contract.operations.iter().any(|op| op.scopes.is_some());

    let mut items = Vec::new();
    let mut trait_methods = Vec::new();
    let mut handlers = Vec::new();
    // path → (method, handler ident)
    let mut routes: BTreeMap<&str, Vec<(String, Ident)>> = BTreeMap::new();

    for op in &contract.operations {
        let method_ident = field_ident(&op.id);
        let request_ident = format_ident!("{}Request", op.id.to_upper_camel_case());
        let response_ident = format_ident!("{}Response", op.id.to_upper_camel_case());
        let params_ident = format_ident!("{}Params", op.id.to_upper_camel_case());
        let spec_ident = format_ident!("{}", op.id.to_shouty_snake_case());
        let handler_ident = format_ident!("handle_{}", op.id.to_snake_case());
        routes.entry(op.path.as_str()).or_default().push((op.method.to_lowercase(), handler_ident.clone()));

        // --- The operation's static description, used by the runtime to validate. ---
        let op_id = &op.id;
        let method_upper = &op.method;
        let path = &op.path;
        let scopes = match &op.scopes {
            Some(scopes) => quote!(Some(&[#(#scopes),*])),
            None => quote!(None),
        };
        let param_specs = op.params.iter().map(|param| {
            let name = &param.name;
            let location = match param.location {
                ParamLocation::Path => quote!(rt::ParamLocation::Path),
                ParamLocation::Query => quote!(rt::ParamLocation::Query),
                ParamLocation::Header => quote!(rt::ParamLocation::Header),
                ParamLocation::Cookie => unreachable!("the linter refuses cookie parameters before generation"),
            };
            let required = param.required;
            let kind = param_kind(contract, &param.schema);
            let default = match param_default(contract, &param.schema) {
                Some(value) => {
                    let text = value.to_string();
                    quote!(Some(#text))
                }
                None => quote!(None),
            };
            quote!(rt::ParamSpec { name: #name, location: #location, required: #required, kind: #kind, default: #default })
        });
        let params_file = format!("{op_id}.params.json");
        let params_path = format!("../{SCHEMA_DIR}/{params_file}");
        schemas.insert(params_file, params_schema(contract, op));
        let params_schema = quote!(include_str!(#params_path));
        let body_schema = match &op.body {
            Some(body) => {
                let body_file = format!("{op_id}.body.json");
                let body_path = format!("../{SCHEMA_DIR}/{body_file}");
                schemas.insert(body_file, contract.standalone_schema(request_schema(body)));
                quote!(Some(include_str!(#body_path)))
            }
            None => quote!(None),
        };
        let spec_doc = format!(" How `{op_id}` is validated.");
        items.push(quote! {
            #[doc = #spec_doc]
            pub static #spec_ident: rt::OperationSpec = rt::OperationSpec::new(
                #op_id, #method_upper, #path, #scopes, &[#(#param_specs),*], #params_schema, #body_schema,
            );
        });

        // --- Request type. ---
        let mut request_fields = Vec::new();
        let mut request_inits = Vec::new();
        let mut params_fields = Vec::new();
        if op.scopes.is_some() {
            request_fields.push(quote! {
                /// Who is calling: the principal the bearer token was authenticated as.
                pub principal: rt::Principal,
            });
            request_inits.push(quote!(principal));
        }
        for param in &op.params {
            let ident = match param.location {
                ParamLocation::Header => header_ident(&param.name),
                _ => field_ident(&param.name),
            };
            let name = &param.name;
            let base = param_type(contract, &param.schema);
            let optional = !param.required && param_default(contract, &param.schema).is_none();
            let ty = if optional { quote!(Option<#base>) } else { base };
            let doc =
                doc_attr(&format!("`{}` ({} parameter). {}", param.name, param.location.as_str(), param.description));
            request_fields.push(quote!(#doc pub #ident: #ty,));
            let default_attr = if optional { quote!(#[serde(default)]) } else { quote!() };
            params_fields.push(quote!(#[serde(rename = #name)] #default_attr #ident: #ty,));
            request_inits.push(quote!(#ident: params.#ident));
        }
        let body_type = op.body.as_ref().map(|body| match component_name(request_schema(body)) {
            Some(name) => {
                let ident = type_ident(name);
                quote!(types::#ident)
            }
            None => quote!(::serde_json::Value),
        });
        if let Some(body_type) = &body_type {
            request_fields.push(quote! {
                /// The request body, already validated against the contract.
                pub body: #body_type,
            });
            request_inits.push(quote!(body));
        }
        let request_doc = doc_attr(&format!("The request of `{op_id}` (`{method_upper} {path}`)."));
        items.push(quote! {
            #request_doc
            #[derive(Debug, Clone)]
            pub struct #request_ident { #(#request_fields)* }
        });
        if !op.params.is_empty() {
            items.push(quote! {
                #[derive(serde::Deserialize)]
                struct #params_ident { #(#params_fields)* }
            });
        }

        // --- Response enum: what the implementation answers itself. ---
        let mut variants = Vec::new();
        let mut arms = Vec::new();
        for response in op.responses.iter().filter(|r| returned_by_implementations(r)) {
            let variant = format_ident!("{}", variant_name(response.status));
            let status = Literal::u16_unsuffixed(response.status);
            let doc = doc_attr(&format!("{status}: {}", response.description));
            let kind = body_kind(response);
            let content_type = response.content.first().map(|c| c.media_type.clone()).unwrap_or_default();
            let header_fields: Vec<(Ident, TokenStream, &str, bool)> = response
                .headers
                .iter()
                .map(|h| {
                    let base = header_type(&h.schema);
                    let ty = if h.required { base } else { quote!(Option<#base>) };
                    (header_ident(&h.name), ty, h.name.as_str(), h.required)
                })
                .collect();
            // Required headers in the list as it is made; optional ones pushed when present.
            let required_headers =
                header_fields.iter().filter(|(.., required)| *required).map(|(ident, _, name, _)| {
                    let lower = name.to_ascii_lowercase();
                    quote!((#lower, #ident.to_string()))
                });
            let optional_pushes: Vec<TokenStream> = header_fields
                .iter()
                .filter(|(.., required)| !*required)
                .map(|(ident, _, name, _)| {
                    let lower = name.to_ascii_lowercase();
                    quote!(if let Some(value) = #ident { headers.push((#lower, value.to_string())); })
                })
                .collect();
            let mutable = if optional_pushes.is_empty() { quote!() } else { quote!(mut) };
            let headers = quote! {
                let #mutable headers: Vec<(&'static str, String)> = vec![#(#required_headers),*];
                #(#optional_pushes)*
            };
            let build = |headers: TokenStream| match &kind {
                BodyKind::None => quote!(rt::empty_response(#status, #headers)),
                BodyKind::Json(_) => quote!(rt::json_response(#status, #content_type, &body, #headers)),
                BodyKind::Text => quote!(rt::text_response(#status, #content_type, body, #headers)),
            };
            let body_ty = match &kind {
                BodyKind::None => None,
                BodyKind::Json(ty) => Some(ty.clone()),
                BodyKind::Text => Some(quote!(String)),
            };
            if header_fields.is_empty() {
                let build = build(quote!(Vec::new()));
                match body_ty {
                    None => {
                        variants.push(quote!(#doc #variant,));
                        arms.push(quote!(Self::#variant => #build,));
                    }
                    Some(ty) => {
                        variants.push(quote!(#doc #variant(#ty),));
                        arms.push(quote!(Self::#variant(body) => #build,));
                    }
                }
            } else {
                let build = build(quote!(headers));
                let field_decls = header_fields.iter().map(|(ident, ty, name, _)| {
                    let doc = format!(" The `{name}` header.");
                    quote!(#[doc = #doc] #ident: #ty,)
                });
                let field_names: Vec<&Ident> = header_fields.iter().map(|(ident, ..)| ident).collect();
                let (body_decl, body_bind) = match body_ty {
                    None => (quote!(), quote!()),
                    Some(ty) => (
                        quote!(/// The response body.
                        body: #ty,),
                        quote!(body,),
                    ),
                };
                variants.push(quote!(#doc #variant { #body_decl #(#field_decls)* },));
                arms.push(quote! {
                    Self::#variant { #body_bind #(#field_names),* } => {
                        #headers
                        #build
                    }
                });
            }
        }
        let response_doc = doc_attr(&format!(
            "What `{op_id}` answers itself, one variant per status. Errors with the contract's \
             `Error` body are returned as `Err(ApiError)` instead."
        ));
        items.push(quote! {
            #response_doc
            #[derive(Debug, Clone)]
            pub enum #response_ident { #(#variants)* }

            impl IntoResponse for #response_ident {
                fn into_response(self) -> Response {
                    match self { #(#arms)* }
                }
            }
        });

        // --- Trait method. ---
        let mut method_doc = format!("`{method_upper} {path}`: {}\n\n{}", op.summary, op.description);
        if let Some(scopes) = &op.scopes {
            method_doc.push_str(&format!(
                "\n\nNeeds the scope `{}`; the router has checked it before this is called.",
                scopes.join(", ")
            ));
        }
        let method_doc = doc_attr(&method_doc);
        trait_methods.push(quote! {
            #method_doc
            fn #method_ident(&self, request: #request_ident)
                -> impl Future<Output = Result<#response_ident, rt::ApiError>> + Send;
        });

        // --- Handler. ---
        let has_path_params = op.params.iter().any(|p| p.location == ParamLocation::Path);
        let path_arg =
            if has_path_params { quote!(path: Result<RawPathParams, RawPathParamsRejection>,) } else { quote!() };
        let path_value = if has_path_params { quote!(Some(path)) } else { quote!(None) };
        let authenticate = if op.scopes.is_some() {
            quote!(let principal = rt::authorize(&#spec_ident, &parts, |token| api.authenticate(token)).await?;)
        } else {
            quote!()
        };
        let extract_params = if op.params.is_empty() {
            quote!(rt::reject_query(&#spec_ident, &parts)?;)
        } else {
            quote!(let params: #params_ident = rt::extract_params(&#spec_ident, &parts, #path_value)?;)
        };
        let extract_body = if body_type.is_some() {
            quote!(let body = rt::json_body(&#spec_ident, &parts, body).await?;)
        } else {
            quote!(drop(body);)
        };
        handlers.push(quote! {
            async fn #handler_ident<A: #trait_ident>(
                State(api): State<Arc<A>>,
                #path_arg
                request: Request,
            ) -> Response {
                let (parts, body) = request.into_parts();
                let result = async {
                    #authenticate
                    #extract_params
                    #extract_body
                    api.#method_ident(#request_ident { #(#request_inits),* }).await
                }
                .await;
                rt::respond(result)
            }
        });
    }

    // --- Router. ---
    let route_calls = routes.iter().map(|(path, methods)| {
        let mut allowed: Vec<String> = methods.iter().map(|(m, _)| m.to_uppercase()).collect();
        if methods.iter().any(|(m, _)| m == "get") && !methods.iter().any(|(m, _)| m == "head") {
            allowed.push("HEAD".into());
        }
        allowed.sort();
        let allow = allowed.join(", ");
        let mut chain = Vec::new();
        for (index, (method, handler)) in methods.iter().enumerate() {
            let method = format_ident!("{}", method);
            if index == 0 {
                chain.push(quote!(axum::routing::#method(#handler::<A>)));
            } else {
                chain.push(quote!(.#method(#handler::<A>)));
            }
        }
        quote!(.route(#path, #(#chain)*.fallback(rt::method_not_allowed(#allow))))
    });

    let route_paths = routes.keys().copied();

    let authenticate_method = if has_secured {
        quote! {
            /// Authenticates the bearer token of a secured operation and returns the
            /// principal it stands for, or an error (normally 401). The router calls it
            /// before any secured operation and then checks the operation's scope itself.
            fn authenticate(&self, bearer_token: String)
                -> impl Future<Output = Result<rt::Principal, rt::ApiError>> + Send;
        }
    } else {
        quote!()
    };
    let trait_doc = doc_attr(&format!(
        "The {title} API: one method per operation of `openapi/{}`. Implement it and serve it with [`router`].",
        info.file
    ));
    let file = info.file;
    let operation_count = Literal::usize_unsuffixed(contract.operations.len());
    let spec_idents: Vec<Ident> =
        contract.operations.iter().map(|op| format_ident!("{}", op.id.to_shouty_snake_case())).collect();

    let mut extractors = vec![quote!(Request), quote!(State)];
    if contract.operations.iter().any(|op| op.path_params().next().is_some()) {
        extractors.insert(0, quote!(RawPathParams));
        extractors.push(quote!(rejection::RawPathParamsRejection));
    }
    let tokens = quote! {
        #crate_doc

        use axum::extract::{#(#extractors),*};
        use axum::response::{IntoResponse, Response};
        use pake_api_runtime as rt;
        use std::sync::Arc;

        /// The models of this contract, shared with the client crate.
        pub use #client_crate::types;

        /// The contract this server implements, as served at `/openapi.json`.
        pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
        /// The documentation page served at `/docs` (self-contained; no network needed).
        pub const DOCS_HTML: &str = include_str!("../docs.html");
        /// The contract file under `openapi/`.
        pub const CONTRACT_FILE: &str = #file;
        /// How many operations the contract has.
        pub const OPERATION_COUNT: usize = #operation_count;

        /// Every path [`router`] serves, in its syntax (`{param}` for a segment): what a
        /// server that mounts the router beside other handlers must send to it.
        pub const PATHS: &[&str] = &[#(#route_paths,)* "/openapi.json", "/docs"];

        /// Every operation's validation spec, for [`warm`].
        pub static OPERATIONS: &[&rt::OperationSpec] = &[#(&#spec_idents),*];

        /// Compiles every operation's schemas; call it at start-up to fail fast.
        pub fn warm() -> Result<(), String> {
            OPERATIONS.iter().try_for_each(|spec| spec.warm())
        }

        #trait_doc
        pub trait #trait_ident: Send + Sync + 'static {
            #authenticate_method
            #(#trait_methods)*
        }

        #(#items)*

        #(#handlers)*

        /// Serves `api` with every operation of the contract, `/openapi.json` and `/docs`.
        /// Unknown paths answer 404 and known paths with an undeclared method 405 with
        /// `Allow`, both with the contract's error body.
        pub fn router<A: #trait_ident>(api: Arc<A>) -> axum::Router {
            axum::Router::new()
                #(#route_calls)*
                .route("/openapi.json", axum::routing::get(|| async { rt::openapi_json(OPENAPI_JSON) }))
                .route("/docs", axum::routing::get(|| async { rt::docs_page(DOCS_HTML) }))
                .fallback(rt::not_found)
                .with_state(api)
        }
    };
    Server { tokens, schemas }
}
