//! Why an operator command failed, as a message, the contract's details and an exit code
//! whose number says the class of failure.

use serde::Serialize;
use serde_json::Value;

/// The class of a failure; the process exits with its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    General = 1,
    /// The command or its input is wrong (also clap's own exit code for bad arguments).
    Usage = 2,
    NotFound = 3,
    Conflict = 4,
    Auth = 5,
    Unavailable = 6,
}

impl Class {
    /// The class of an HTTP answer's status.
    pub fn of_status(status: u16) -> Class {
        match status {
            400 | 405 | 413 | 415 | 422 => Class::Usage,
            404 => Class::NotFound,
            409 | 412 | 428 => Class::Conflict,
            401 | 403 => Class::Auth,
            429 | 502 | 503 | 504 => Class::Unavailable,
            _ => Class::General,
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub class: Class,
    pub message: String,
    /// One line per problem the service listed (`field: message`).
    pub details: Vec<String>,
}

impl Failure {
    pub fn new(class: Class, message: impl Into<String>) -> Failure {
        Failure { class, message: message.into(), details: Vec::new() }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Class::Usage, message)
    }

    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(Class::NotFound, message)
    }

    /// The contract's `Error` body answered with `status`.
    fn from_body(status: u16, body: &Value) -> Failure {
        let message = body["message"].as_str().map_or_else(|| format!("the service answered {status}"), str::to_string);
        let details = body["details"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|detail| {
                let message = detail["message"].as_str().unwrap_or_default();
                match detail["field"].as_str().or(detail["location"].as_str()) {
                    Some(field) if !field.is_empty() => format!("{field}: {message}"),
                    _ => message.to_string(),
                }
            })
            .collect();
        let code = body["code"].as_str().map(|code| format!(" ({code})")).unwrap_or_default();
        Failure { class: Class::of_status(status), message: format!("{message}{code}"), details }
    }

    /// A generated client's error, reading the body of an answer the contract does not list.
    pub async fn from_api<E: Serialize>(error: pake_client_auth::Error<E>) -> Failure {
        use progenitor_client::Error as Api;
        let error = match error {
            pake_client_auth::Error::Token(token) => {
                let class = match token.status {
                    Some(400 | 401 | 403) => Class::Auth,
                    Some(status) => Class::of_status(status),
                    None => Class::Unavailable,
                };
                let mut failure = Failure::new(class, token.to_string());
                if class == Class::Auth {
                    failure.details.push("check the client id and secret: pake login --client-id ID".into());
                }
                return failure;
            }
            pake_client_auth::Error::Api(error) => error,
        };
        let status = error.status().map(|status| status.as_u16());
        let mut failure = match error {
            Api::ErrorResponse(answer) => {
                let status = answer.status().as_u16();
                Failure::from_body(status, &serde_json::to_value(answer.into_inner()).unwrap_or_default())
            }
            Api::UnexpectedResponse(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                match serde_json::from_str::<Value>(&text) {
                    Ok(body) if body.get("message").is_some() => Failure::from_body(status, &body),
                    _ => Failure::new(Class::of_status(status), format!("the service answered {status}")),
                }
            }
            Api::CommunicationError(error) => Failure::new(Class::Unavailable, chain(&error)),
            Api::InvalidRequest(message) => Failure::usage(format!("invalid argument: {message}")),
            Api::ResponseBodyError(error) | Api::InvalidUpgrade(error) => Failure::new(Class::General, chain(&error)),
            Api::InvalidResponsePayload(_, error) => {
                Failure::new(Class::General, format!("the service's answer does not match its contract: {error}"))
            }
            Api::Custom(message) => Failure::new(Class::General, message),
        };
        match status {
            Some(401) => failure.details.push("log in with pake login, or set PAKE_TOKEN".into()),
            Some(403) => {
                failure.details.push("the credentials in use lack this scope: log in with ones that have it".into())
            }
            _ => {}
        }
        failure
    }

    /// Prints the failure on standard error and gives the exit code.
    pub fn report(&self) -> i32 {
        if !self.message.is_empty() {
            eprintln!("error: {}", self.message);
        }
        for detail in &self.details {
            eprintln!("  {detail}");
        }
        self.class as i32
    }
}

/// An error and its sources on one line (reqwest hides the cause, such as "connection
/// refused", in the chain).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        Failure::new(Class::General, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::{Class, Failure};
    use serde_json::json;

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        let codes: Vec<i32> =
            [400, 422, 404, 409, 412, 401, 403, 503, 429, 500].map(|s| Class::of_status(s) as i32).to_vec();
        assert_eq!(codes, [2, 2, 3, 4, 4, 5, 5, 6, 6, 1]);
    }

    #[test]
    fn the_contracts_error_body_gives_message_code_and_details() {
        let body = json!({"code": "validation_failed", "message": "the request body does not match the schema",
            "details": [{"field": "/port", "location": "body", "message": "must be at most 65535"}, {"message": "and one more"}]});
        let failure = Failure::from_body(422, &body);
        assert_eq!(failure.class, Class::Usage);
        assert_eq!(failure.message, "the request body does not match the schema (validation_failed)");
        assert_eq!(failure.details, ["/port: must be at most 65535", "and one more"]);
    }
}
