//! The deterministic coverage phase, run before the random cases (as schemathesis runs
//! its coverage phase before fuzzing): per operation, a complete request (every optional
//! parameter and body property present), a minimal one (every optional one absent), and
//! one request per interesting value of each parameter and top-level body property:
//! every enum value, each bound of a numeric or length constraint (and just outside it,
//! as a negative case), empty and maximal arrays, and an integer written as a whole
//! float (`3.0`). Every variant is checked against the contract's validator before it is
//! sent, so a positive case is valid and a negative one is not, whatever the schema's
//! combinators do.
//!
//! It also names the properties an operation can be sent with ([`tracked`]) and which of
//! them a request holds ([`presence`]), for the report's "properties exercised" column.

use crate::contract::{Contract, Operation, ParamLocation};
use crate::generate::integer_value;
use crate::schema;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Arrays up to this many items are also sent full (`maxItems` items).
const LARGEST_FULL_ARRAY: usize = 64;
/// Strings up to this long are also sent at `maxLength`.
const LONGEST_BOUNDARY: usize = 4096;

/// Where a tracked property lives in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A parameter (query, header, cookie) by name.
    Param(String),
    /// A top-level property of the JSON body.
    Body(String),
}

impl Place {
    /// How the report names it: `query limit`, `body tags`.
    pub fn label(&self, op: &Operation) -> String {
        match self {
            Place::Param(name) => {
                let location = op.params.iter().find(|p| &p.name == name).map(|p| p.location);
                let prefix = match location {
                    Some(ParamLocation::Header) => "header",
                    Some(ParamLocation::Cookie) => "cookie",
                    Some(ParamLocation::Path) => "path",
                    _ => "query",
                };
                format!("{prefix} {name}")
            }
            Place::Body(name) => format!("body {name}"),
        }
    }

    fn holds(&self, params: &Map<String, Value>, body: Option<&Value>) -> bool {
        match self {
            Place::Param(name) => params.contains_key(name),
            Place::Body(name) => body.and_then(Value::as_object).is_some_and(|b| b.contains_key(name)),
        }
    }

    fn remove(&self, params: &mut Map<String, Value>, body: &mut Option<Value>) {
        match self {
            Place::Param(name) => {
                params.remove(name);
            }
            Place::Body(name) => {
                if let Some(Value::Object(body)) = body {
                    body.remove(name);
                }
            }
        }
    }
}

/// The optional parameters (those `left_out` does not keep out of positive cases) and
/// optional top-level body properties of an operation: each must be sent present and
/// absent in some positive case.
pub fn tracked(contract: &Contract, op: &Operation, left_out: impl Fn(&str) -> bool) -> Vec<Place> {
    let mut places: Vec<Place> = op
        .params
        .iter()
        .filter(|p| !p.required && p.location != ParamLocation::Path && !left_out(&p.name))
        .map(|p| Place::Param(p.name.clone()))
        .collect();
    if let Some((_, body)) = op.body.as_ref().and_then(|b| b.json()) {
        let folded = schema::fold(contract, body).unwrap_or(Value::Bool(true));
        let required: BTreeSet<&str> =
            folded.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        for name in folded.get("properties").and_then(Value::as_object).into_iter().flatten().map(|(k, _)| k) {
            if !required.contains(name.as_str()) {
                places.push(Place::Body(name.clone()));
            }
        }
    }
    places
}

/// Which of `places` a request holds (by index).
pub fn presence(places: &[Place], params: &Map<String, Value>, body: Option<&Value>) -> Vec<bool> {
    places.iter().map(|place| place.holds(params, body)).collect()
}

/// One deterministic request of the coverage phase.
#[derive(Debug, Clone)]
pub struct Variant {
    pub params: Map<String, Value>,
    pub body: Option<Value>,
    /// Whether the request is valid (a positive case) or not (a negative one).
    pub valid: bool,
    pub description: String,
}

/// What the coverage phase needs to know of an operation's validity.
pub struct Checks<'a> {
    /// Whether parameters (name → value, as generated) are valid once the server reads
    /// them and can travel.
    pub params_valid: &'a dyn Fn(&Value) -> bool,
    /// Whether parameters can travel at all (header text, non-empty path segments).
    pub params_travel: &'a dyn Fn(&Value) -> bool,
    /// Whether a body is valid.
    pub body_valid: &'a dyn Fn(&Value) -> bool,
}

/// The coverage phase's requests for `op`, from a complete valid request. Every request
/// after the first takes its other parameters from `fresh_params` (another complete
/// draw), so that a request key such as `Idempotency-Key` is not sent twice with
/// different bodies.
pub fn variants(
    contract: &Contract,
    op: &Operation,
    places: &[Place],
    complete_params: &Map<String, Value>,
    complete_body: Option<&Value>,
    checks: &Checks<'_>,
    fresh_params: &mut dyn FnMut() -> Map<String, Value>,
) -> Vec<Variant> {
    let mut out = Vec::new();
    let mut push = |params: Map<String, Value>, body: Option<Value>, description: String, want_valid: bool| {
        let params_value = Value::Object(params.clone());
        if !(checks.params_travel)(&params_value) {
            return;
        }
        let valid = (checks.params_valid)(&params_value) && body.as_ref().is_none_or(|b| (checks.body_valid)(b));
        if valid == want_valid {
            out.push(Variant { params, body, valid, description });
        }
    };
    push(
        complete_params.clone(),
        complete_body.cloned(),
        "coverage: every optional parameter and property present".into(),
        true,
    );
    // Everything optional left out at once, or (when the schema ties them together) one
    // at a time.
    let (mut params, mut body) = (fresh_params(), complete_body.cloned());
    for place in places {
        place.remove(&mut params, &mut body);
    }
    let all_out_valid =
        (checks.params_valid)(&Value::Object(params.clone())) && body.as_ref().is_none_or(|b| (checks.body_valid)(b));
    if all_out_valid {
        push(params, body, "coverage: every optional parameter and property absent".into(), true);
    } else {
        for place in places {
            let (mut params, mut body) = (fresh_params(), complete_body.cloned());
            place.remove(&mut params, &mut body);
            push(params, body, format!("coverage: {} absent", place.label(op)), true);
        }
    }

    // The interesting values of each parameter and top-level body property.
    for param in &op.params {
        let Some(current) = complete_params.get(&param.name) else { continue };
        let folded = schema::fold(contract, &param.schema).unwrap_or(Value::Bool(true));
        for (value, valid, what) in interesting(&folded, current) {
            let mut params = fresh_params();
            params.insert(param.name.clone(), value);
            push(params, complete_body.cloned(), format!("coverage: parameter {} {what}", param.name), valid);
        }
    }
    if let (Some(Value::Object(body)), Some((_, body_schema))) =
        (complete_body, op.body.as_ref().and_then(|b| b.json()))
    {
        let folded = schema::fold(contract, body_schema).unwrap_or(Value::Bool(true));
        for (name, property) in folded.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let Some(current) = body.get(name) else { continue };
            let property = schema::fold(contract, property).unwrap_or(Value::Bool(true));
            for (value, valid, what) in interesting(&property, current) {
                let mut changed = body.clone();
                changed.insert(name.clone(), value);
                push(
                    fresh_params(),
                    Some(Value::Object(changed)),
                    format!("coverage: body property {name} {what}"),
                    valid,
                );
            }
        }
    }
    out
}

/// Values for one schema worth sending, with whether they should be valid: enum values,
/// bounds and just outside them, whole floats for integers, empty and full arrays.
fn interesting(schema: &Value, current: &Value) -> Vec<(Value, bool, String)> {
    let mut out = Vec::new();
    let Some(object) = schema.as_object() else { return out };
    if let Some(values) = object.get("enum").and_then(Value::as_array) {
        for value in values {
            out.push((value.clone(), true, format!("= {value}")));
        }
        return out;
    }
    let types = schema::types(schema);
    let number = |key: &str| object.get(key).and_then(Value::as_f64);
    if types.contains(&"integer") || types.contains(&"number") {
        let integer = types.contains(&"integer") && !types.contains(&"number");
        let step = if integer { 1.0 } else { 0.5 };
        let as_value = |x: f64| {
            if integer && x.abs() < 9e15 {
                Value::from(x as i64)
            } else {
                serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
            }
        };
        let low = number("minimum").or_else(|| number("exclusiveMinimum").map(|x| x + step));
        let high = number("maximum").or_else(|| number("exclusiveMaximum").map(|x| x - step));
        if let Some(low) = low {
            out.push((as_value(low), true, format!("at its minimum {low}")));
            out.push((as_value(low - step), false, format!("below its minimum ({})", low - step)));
        }
        if let Some(high) = high {
            out.push((as_value(high), true, format!("at its maximum {high}")));
            out.push((as_value(high + step), false, format!("above its maximum ({})", high + step)));
        }
        if integer && let Some(k) = current.as_i64() {
            out.push((integer_value(k, true), true, format!("{k} written as a whole float")));
        }
    }
    if types.contains(&"string") {
        let plain = !object.contains_key("pattern") && !object.contains_key("format");
        let length = |key: &str| object.get(key).and_then(Value::as_u64).map(|n| n as usize);
        if plain {
            let min = length("minLength").unwrap_or(0);
            out.push((Value::String("a".repeat(min)), true, format!("at its minimum length {min}")));
            if min > 0 {
                out.push((Value::String("a".repeat(min - 1)), false, format!("one shorter than {min}")));
            }
            if let Some(max) = length("maxLength").filter(|max| *max <= LONGEST_BOUNDARY) {
                out.push((Value::String("b".repeat(max)), true, format!("at its maximum length {max}")));
                out.push((Value::String("b".repeat(max + 1)), false, format!("one longer than {max}")));
            }
        }
    }
    if types.contains(&"array")
        && let Some(items) = current.as_array()
    {
        let min = object.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        if min == 0 {
            out.push((Value::Array(Vec::new()), true, "empty".into()));
        } else if min == 1 {
            out.push((Value::Array(Vec::new()), false, "empty (it needs an item)".into()));
        }
        let max = object.get("maxItems").and_then(Value::as_u64).map(|n| n as usize);
        if let (Some(max), Some(first)) = (max.filter(|m| *m <= LARGEST_FULL_ARRAY && *m > 0), items.first()) {
            let full: Vec<Value> = (0..max).map(|i| items.get(i).unwrap_or(first).clone()).collect();
            out.push((Value::Array(full.clone()), true, format!("with its maximum {max} items")));
            let mut over = full;
            over.push(first.clone());
            out.push((Value::Array(over), false, format!("with {} items, one over its maximum", max + 1)));
        }
    }
    out
}
