//! The checks every response goes through, whatever the request was: no 5xx, a declared
//! status, a declared content type, a body valid against the declared schema, declared
//! headers present and valid, `Location` on 201 and `Retry-After` on 429 and 503.
//!
//! What a case expects beyond that (valid data accepted, invalid data rejected, 401
//! without a token…) is decided by the engine, which knows what it sent.

use crate::contract::Operation;
use crate::report::Check;
use crate::request::HttpResponse;
use crate::schema::{self, Validators};
use serde_json::Value;

/// One broken check with what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub check: Check,
    pub message: String,
}

impl Violation {
    pub fn new(check: Check, message: impl Into<String>) -> Violation {
        Violation { check, message: message.into() }
    }
}

/// Whether `actual` (a `Content-Type` value) is `declared` (a media range from the
/// contract), ignoring parameters such as `charset`.
pub fn media_type_matches(declared: &str, actual: &str) -> bool {
    let essence = |text: &str| text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let (declared, actual) = (essence(declared), essence(actual));
    if declared == "*/*" || declared == actual {
        return true;
    }
    match declared.strip_suffix("/*") {
        Some(kind) => actual.split('/').next() == Some(kind),
        None => false,
    }
}

/// The checks that hold for any response of `op`.
pub fn check_response(op: &Operation, validators: &Validators, response: &HttpResponse) -> Vec<Violation> {
    let mut found = Vec::new();
    let status = response.status;
    if status >= 500 {
        found.push(Violation::new(Check::NoServerError, format!("answered {status}: {}", response.excerpt())));
    }
    let mut missing_headers: Vec<String> = Vec::new();
    match op.response(status) {
        None => {
            let declared: Vec<String> = op.responses.iter().map(|r| r.status.to_string()).collect();
            found.push(Violation::new(
                Check::StatusDeclared,
                format!("answered {status}, which the operation does not declare (declared: {})", declared.join(", ")),
            ));
        }
        Some(declared) => {
            check_content(declared, validators, response, &mut found);
            for header in &declared.headers {
                // Content-Type is described by `content`, not `headers` (OpenAPI says to ignore it).
                if header.name.eq_ignore_ascii_case("content-type") {
                    continue;
                }
                let check = header_check(&header.name);
                match response.header(&header.name) {
                    None if header.required => {
                        missing_headers.push(header.name.to_ascii_lowercase());
                        found.push(Violation::new(
                            check,
                            format!("answered {status} without the required {} header", header.name),
                        ));
                    }
                    None => {}
                    Some(text) => {
                        let folded = schema::fold(validators.contract(), &header.schema).unwrap_or(Value::Bool(true));
                        let valid = schema::coerce_param(text, &schema::types(&folded))
                            .is_some_and(|value| validators.get(&header.schema).is_ok_and(|v| v.is_valid(&value)));
                        if !valid {
                            found.push(Violation::new(
                                check,
                                format!(
                                    "answered {status} with {}: {text:?}, which does not match its schema",
                                    header.name
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    if status == 201 && response.header("location").is_none() && !missing_headers.iter().any(|h| h == "location") {
        found.push(Violation::new(Check::LocationOnCreated, "answered 201 without a Location header"));
    }
    if (status == 429 || status == 503)
        && response.header("retry-after").is_none()
        && !missing_headers.iter().any(|h| h == "retry-after")
    {
        found.push(Violation::new(Check::RetryAfterPresent, format!("answered {status} without a Retry-After header")));
    }
    found
}

fn header_check(name: &str) -> Check {
    if name.eq_ignore_ascii_case("location") {
        Check::LocationOnCreated
    } else if name.eq_ignore_ascii_case("retry-after") {
        Check::RetryAfterPresent
    } else {
        Check::HeadersMatchSchema
    }
}

fn check_content(
    declared: &crate::contract::Response,
    validators: &Validators,
    response: &HttpResponse,
    found: &mut Vec<Violation>,
) {
    let status = response.status;
    let content_type = response.header("content-type");
    let media_types: Vec<&str> = declared.content.iter().map(|m| m.media_type.as_str()).collect();
    if declared.content.is_empty() {
        if !response.body.is_empty() {
            found.push(Violation::new(
                Check::ContentTypeDeclared,
                format!(
                    "answered {status} with a {} body where the contract declares none",
                    content_type.unwrap_or("untyped")
                ),
            ));
        }
        return;
    }
    if response.body.is_empty() {
        found.push(Violation::new(
            Check::ContentTypeDeclared,
            format!("answered {status} without a body where the contract declares {}", media_types.join(" or ")),
        ));
        return;
    }
    let Some(content_type) = content_type else {
        found.push(Violation::new(
            Check::ContentTypeDeclared,
            format!(
                "answered {status} without a Content-Type where the contract declares {}",
                media_types.join(" or ")
            ),
        ));
        return;
    };
    let Some(declared) = declared.content.iter().find(|m| media_type_matches(&m.media_type, content_type)) else {
        found.push(Violation::new(
            Check::ContentTypeDeclared,
            format!("answered {status} with {content_type} where the contract declares {}", media_types.join(" or ")),
        ));
        return;
    };
    // Text bodies (Prometheus exposition) are checked for their status and type only.
    if !declared.is_json() {
        return;
    }
    let schema = &declared.schema;
    let body: Value = match serde_json::from_slice(&response.body) {
        Ok(body) => body,
        Err(error) => {
            found.push(Violation::new(
                Check::BodyMatchesSchema,
                format!("answered {status} with a body that is not JSON ({error}): {}", response.excerpt()),
            ));
            return;
        }
    };
    match validators.get(schema) {
        Ok(validator) => {
            let problems: Vec<String> = validator
                .iter_errors(&body)
                .take(3)
                .map(|e| {
                    let pointer = e.instance_path().to_string();
                    format!("{}: {e}", if pointer.is_empty() { "/" } else { pointer.as_str() })
                })
                .collect();
            if !problems.is_empty() {
                found.push(Violation::new(
                    Check::BodyMatchesSchema,
                    format!("answered {status} with a body that does not match the schema: {}", problems.join("; ")),
                ));
            }
        }
        Err(error) => found.push(Violation::new(
            Check::BodyMatchesSchema,
            format!("the declared schema of {status} does not compile: {error}"),
        )),
    }
}
