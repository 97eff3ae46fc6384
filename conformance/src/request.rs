//! Requests as the engine sends them: an operation's parameters and body turned into a
//! concrete HTTP request (path parameters percent-encoded, query form-encoded), sent over
//! real HTTP, and printed as a `curl` command that reproduces it.

use crate::contract::{Operation, ParamLocation};
use crate::schema::param_text;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Which credentials a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// The target's token (every scope).
    Token,
    /// The target's deliberately invalid token.
    BadToken,
    /// No `Authorization` header.
    Anonymous,
}

/// What goes in the request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    None,
    /// Serialized with the operation's JSON media type.
    Json(Value),
    /// Exactly these bytes with this content type (malformed JSON, a wrong media type).
    Raw {
        content_type: Option<String>,
        bytes: Vec<u8>,
    },
}

/// A request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    /// The path with parameters substituted and percent-encoded, without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Option<Vec<u8>>,
    pub auth: Auth,
}

/// An answer as received.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The start of the body as text, for messages.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut excerpt: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            excerpt.push('…');
        }
        excerpt
    }
}

/// A JSON value as the engine sends it. Floats with a whole value (the generator writes
/// some integers that way) come out in one of the notations JSON Schema reads as an
/// integer, chosen by the value so that a case always serializes the same: `3.0`, `3e0`,
/// `30e-1` or `3.0E0`. Every other number is written as `serde_json` writes it.
pub fn json_text(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, WholeFloats);
    serde::Serialize::serialize(value, &mut serializer).expect("a JSON value serializes");
    out
}

struct WholeFloats;

impl serde_json::ser::Formatter for WholeFloats {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, value: f64) -> std::io::Result<()> {
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 9e15 {
            let k = value as i64;
            let sign = if value.is_sign_negative() && k == 0 { "-" } else { "" };
            return match k.rem_euclid(4) {
                0 => write!(writer, "{sign}{k}.0"),
                1 => write!(writer, "{sign}{k}e0"),
                2 => write!(writer, "{sign}{k}0e-1"),
                _ => write!(writer, "{sign}{k}.0E0"),
            };
        }
        serde_json::ser::CompactFormatter.write_f64(writer, value)
    }
}

/// Percent-encodes a path segment: everything but RFC 3986 unreserved characters.
pub fn encode_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

impl HttpRequest {
    /// The request for `op` with these parameters (name → JSON value; names the operation
    /// does not declare go in the query; cookies go in one `Cookie` header) and body.
    pub fn build(op: &Operation, params: &Map<String, Value>, payload: &Payload, auth: Auth) -> HttpRequest {
        let mut path = op.path.clone();
        let mut query = Vec::new();
        let mut headers = Vec::new();
        let mut cookies = Vec::new();
        for (name, value) in params {
            let text = param_text(value);
            match op.params.iter().find(|p| &p.name == name).map(|p| p.location) {
                Some(ParamLocation::Path) => path = path.replace(&format!("{{{name}}}"), &encode_segment(&text)),
                Some(ParamLocation::Header) => headers.push((name.clone(), text)),
                Some(ParamLocation::Cookie) => cookies.push(format!("{name}={text}")),
                Some(ParamLocation::Query) | None => query.push((name.clone(), text)),
            }
        }
        if !cookies.is_empty() {
            headers.push(("Cookie".to_string(), cookies.join("; ")));
        }
        let (content_type, body) = match payload {
            Payload::None => (None, None),
            Payload::Json(value) => {
                let media = op.body.as_ref().and_then(|b| b.json()).map_or("application/json", |(media, _)| media);
                (Some(media.to_string()), Some(json_text(value)))
            }
            Payload::Raw { content_type, bytes } => (content_type.clone(), Some(bytes.clone())),
        };
        HttpRequest { method: op.method.clone(), path, query, headers, content_type, body, auth }
    }

    /// The full URL against `base_url`.
    pub fn url(&self, base_url: &str) -> String {
        let mut url = format!("{}{}", base_url.trim_end_matches('/'), self.path);
        if !self.query.is_empty() {
            let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(&self.query).finish();
            url.push('?');
            url.push_str(&query);
        }
        url
    }

    /// A `curl` command that sends the same request. The real token is never printed: the
    /// command reads it from `$PAKE_TOKEN`.
    pub fn curl(&self, base_url: &str, bad_token: &str) -> String {
        let mut command = format!("curl -sS -i -X {} {}", self.method, quote(&self.url(base_url)));
        match self.auth {
            Auth::Token => command.push_str(" -H \"Authorization: Bearer $PAKE_TOKEN\""),
            Auth::BadToken => {
                let _ = write!(command, " -H {}", quote(&format!("Authorization: Bearer {bad_token}")));
            }
            Auth::Anonymous => {}
        }
        for (name, value) in &self.headers {
            let _ = write!(command, " -H {}", quote(&format!("{name}: {value}")));
        }
        if let Some(content_type) = &self.content_type {
            let _ = write!(command, " -H {}", quote(&format!("Content-Type: {content_type}")));
        }
        if let Some(body) = &self.body {
            let _ = write!(command, " --data-binary {}", quote(&String::from_utf8_lossy(body)));
        }
        command
    }

    /// Sends the request; `Err` says why no answer came.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        base_url: &str,
        token: Option<&str>,
        bad_token: &str,
    ) -> Result<HttpResponse, String> {
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = client.request(method, self.url(base_url));
        let bearer = match self.auth {
            Auth::Token => token,
            Auth::BadToken => Some(bad_token),
            Auth::Anonymous => None,
        };
        if let Some(bearer) = bearer {
            request = request.header(reqwest::header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(content_type) = &self.content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type.as_str());
        }
        if let Some(body) = &self.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let body = response.bytes().await.map_err(|e| error_chain(&e))?.to_vec();
        Ok(HttpResponse { status, headers, body })
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        chain.push_str(": ");
        chain.push_str(&next.to_string());
        source = next.source();
    }
    chain
}

/// Quotes for a POSIX shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
