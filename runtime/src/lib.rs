//! What the generated PAKE servers link against.
//!
//! The generated router of each contract describes every operation with an
//! [`OperationSpec`] and calls into this crate to authenticate the caller, extract and
//! validate parameters and bodies against the contract's own JSON Schemas, and turn
//! results into responses. Errors everywhere are [`ApiError`], which renders the
//! contract's shared `Error` body.
//!
//! This crate knows nothing about any particular contract and nothing about storage; it
//! is not where business rules go.

mod error;
mod extract;
mod respond;
pub mod schema;

pub use error::{ApiError, DetailLocation, ErrorDetail};
pub use extract::{
    OperationSpec, ParamKind, ParamLocation, ParamSpec, authorize, bearer_token, extract_params, integer_text,
    json_body, reject_query,
};
pub use respond::{
    docs_page, empty_response, json_response, method_not_allowed, not_found, openapi_json, respond, text_response,
};

/// Who is calling: what a bearer token was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The token's subject (an API client id, a service, an operator).
    pub subject: String,
    /// The tenant the caller acts for, when there is one.
    pub tenant: Option<String>,
    /// The scopes the token grants.
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Largest request body a generated server reads, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
