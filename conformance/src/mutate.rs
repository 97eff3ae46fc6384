//! Negative data: one valid value with exactly one thing broken — a wrong type, a
//! required property left out, an unknown property, a number out of range, a string too
//! long or short, not matching its pattern or format, a value outside an enum.
//!
//! A mutation is kept only when the compiled validator (or, for parameters, the server's
//! reading of the text) says the result is invalid, so a negative case is always invalid
//! for one stated reason and the expected answer is a 4xx.

use crate::contract::Contract;
use crate::generate::ValueStrategy;
use crate::schema;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::SBoxedStrategy;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Mutations are not looked for deeper than this.
const MAX_DEPTH: usize = 16;
/// Strings are not made longer than this to break `maxLength` (bodies have size limits
/// of their own, which are a different check).
const LONGEST_MUTATION: usize = 65_536;

/// An invalid value and what is wrong with it.
#[derive(Debug, Clone)]
pub struct Negative {
    pub value: Value,
    /// `"/port: 65536 is above the maximum 65535"`.
    pub description: String,
}

/// What the mutated value is.
#[derive(Debug, Clone)]
pub enum Shape {
    /// A JSON request body.
    Body,
    /// An operation's parameters as one object (name → value), sent as text: only scalar
    /// values make sense, path parameters can neither be left out nor emptied, and an
    /// unknown name can only be sent in the query.
    Params { path: BTreeSet<String> },
}

/// Where in the value and what to do there.
#[derive(Debug, Clone)]
struct Mutation {
    tokens: Vec<String>,
    edit: Edit,
    what: String,
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(Value),
    Remove(String),
    Insert(String, Value),
}

/// The name an unknown property or query parameter gets.
pub const UNKNOWN_NAME: &str = "x_unexpected_field";

/// Invalid values made from `positive` values of `schema`. `still_valid` decides whether a
/// mutated value would pass the server's validation; mutations it accepts are discarded.
pub fn negative(
    contract: Arc<Contract>,
    schema: Value,
    positive: ValueStrategy,
    shape: Shape,
    still_valid: Arc<dyn Fn(&Value) -> bool + Send + Sync>,
) -> SBoxedStrategy<Negative> {
    (positive, any::<Index>())
        .prop_filter_map("a mutation that makes the value invalid", move |(value, index)| {
            let mut found = Vec::new();
            collect(&contract, &schema, &value, &mut Vec::new(), 0, &shape, &mut found);
            if found.is_empty() {
                return None;
            }
            let mutation = found.swap_remove(index.index(found.len()));
            let mutated = apply(value, &mutation)?;
            if still_valid(&mutated) {
                return None;
            }
            let pointer: String =
                mutation.tokens.iter().map(|t| format!("/{}", crate::contract::pointer_token(t))).collect();
            let pointer = if pointer.is_empty() { "/".to_string() } else { pointer };
            Some(Negative { value: mutated, description: format!("{pointer}: {}", mutation.what) })
        })
        .sboxed()
}

/// Whether any string in `value`, member names included, holds U+0000, which servers
/// refuse although no schema says so.
pub fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(members) => members.iter().any(|(name, member)| name.contains('\0') || holds_nul(member)),
        _ => false,
    }
}

fn apply(mut value: Value, mutation: &Mutation) -> Option<Value> {
    let mut node = &mut value;
    for token in &mutation.tokens {
        node = match node {
            Value::Object(object) => object.get_mut(token)?,
            Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match &mutation.edit {
        Edit::Replace(replacement) => *node = replacement.clone(),
        Edit::Remove(key) => {
            node.as_object_mut()?.remove(key)?;
        }
        Edit::Insert(key, inserted) => {
            node.as_object_mut()?.insert(key.clone(), inserted.clone());
        }
    }
    Some(value)
}

fn push(found: &mut Vec<Mutation>, tokens: &[String], edit: Edit, what: String) {
    found.push(Mutation { tokens: tokens.to_vec(), edit, what });
}

fn collect(
    contract: &Contract,
    schema: &Value,
    value: &Value,
    tokens: &mut Vec<String>,
    depth: usize,
    shape: &Shape,
    found: &mut Vec<Mutation>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(folded) = schema::fold(contract, schema) else { return };
    let Value::Object(object) = &folded else { return };
    let params = matches!(shape, Shape::Params { .. });
    let param_root = params && depth == 0;
    let path_param = match shape {
        Shape::Params { path } => depth == 1 && tokens.first().is_some_and(|name| path.contains(name)),
        Shape::Body => false,
    };

    // A union is broken through its branches: what breaks the branch a value came from
    // usually breaks the union, and what does not is discarded by the validity check.
    for key in ["oneOf", "anyOf"] {
        let Some(branches) = object.get(key).and_then(Value::as_array) else { continue };
        let mut rest = object.clone();
        rest.remove(key);
        for branch in branches {
            if let Ok(Value::Object(branch)) = schema::fold(contract, branch) {
                let combined = Value::Object(schema::merge(rest.clone(), branch));
                collect(contract, &combined, value, tokens, depth + 1, shape, found);
            }
        }
        return;
    }
    if !param_root {
        node_mutations(object, value, tokens, params, path_param, found);
    }
    if let Value::Object(map) = value {
        object_mutations(object, map, tokens, shape, depth, found);
    }

    // Parameters are scalars: nothing below them to break.
    if params && depth >= 1 {
        return;
    }
    match value {
        Value::Object(map) => {
            let properties = object.get("properties").and_then(Value::as_object);
            let additional = object.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                let Some(sub) = properties.and_then(|p| p.get(key)).or(additional) else { continue };
                tokens.push(key.clone());
                collect(contract, sub, child, tokens, depth + 1, shape, found);
                tokens.pop();
            }
        }
        Value::Array(items) => {
            let Some(sub) = object.get("items") else { return };
            for (index, child) in items.iter().enumerate().take(2) {
                tokens.push(index.to_string());
                collect(contract, sub, child, tokens, depth + 1, shape, found);
                tokens.pop();
            }
        }
        _ => {}
    }
}

/// Mutations of the value itself: its type and the constraints on it.
fn node_mutations(
    object: &Map<String, Value>,
    value: &Value,
    tokens: &[String],
    params: bool,
    path_param: bool,
    found: &mut Vec<Mutation>,
) {
    let allowed = schema::types(&Value::Object(object.clone()));
    let candidates: Vec<Value> = if params {
        vec![Value::String("not-a-number".into()), Value::from(1.5), Value::from(-1), Value::Bool(true)]
    } else {
        vec![
            Value::Null,
            Value::Bool(true),
            Value::from(12345),
            Value::from(1.5),
            Value::String("wrong type".into()),
            Value::Array(vec![]),
            Value::Object(Map::new()),
        ]
    };
    for candidate in candidates {
        if params {
            // Parameters travel as text, so "a wrong type" is text the declared type cannot
            // read; whether it is invalid is decided by reading it back.
            let what = format!("{:?} where {} is expected", schema::param_text(&candidate), allowed.join(" or "));
            push(found, tokens, Edit::Replace(candidate), what);
        } else if !allowed.iter().any(|t| schema::has_type(&candidate, t)) {
            let what = format!("a {} where {} is expected", json_type(&candidate), allowed.join(" or "));
            push(found, tokens, Edit::Replace(candidate), what);
        }
    }
    if object.contains_key("enum") {
        push(
            found,
            tokens,
            Edit::Replace(Value::String("not-one-of-the-values".into())),
            "a value outside the enum".into(),
        );
        push(found, tokens, Edit::Replace(Value::from(987_654_321)), "a value outside the enum".into());
    }
    if let Some(constant) = object.get("const") {
        let other =
            if *constant == Value::String("other".into()) { Value::from(0) } else { Value::String("other".into()) };
        push(found, tokens, Edit::Replace(other), "a value other than the const".into());
    }

    match value {
        Value::String(text) => string_mutations(object, text, tokens, params, path_param, found),
        Value::Number(_) => {
            let n = value.as_f64().unwrap_or_default();
            let integral = allowed.contains(&"integer") && !allowed.contains(&"number");
            let nudge = if integral { 1.0 } else { 0.5 };
            // A bound broken in the notation the valid value was written in: a whole float
            // (`8080.0`) stays one, so that out-of-range whole floats are refused too.
            let as_float = matches!(value, Value::Number(n) if n.is_f64());
            let number = |x: f64| {
                if x.fract() == 0.0 && x.abs() < 9e15 && !as_float { Value::from(x as i64) } else { Value::from(x) }
            };
            let bound = |key: &str| object.get(key).and_then(Value::as_f64);
            if let Some(minimum) = bound("minimum") {
                push(found, tokens, Edit::Replace(number(minimum - nudge)), format!("below the minimum {minimum}"));
            }
            if let Some(maximum) = bound("maximum") {
                push(found, tokens, Edit::Replace(number(maximum + nudge)), format!("above the maximum {maximum}"));
            }
            if let Some(exclusive) = bound("exclusiveMinimum") {
                push(
                    found,
                    tokens,
                    Edit::Replace(number(exclusive)),
                    format!("not above the exclusive minimum {exclusive}"),
                );
            }
            if let Some(exclusive) = bound("exclusiveMaximum") {
                push(
                    found,
                    tokens,
                    Edit::Replace(number(exclusive)),
                    format!("not below the exclusive maximum {exclusive}"),
                );
            }
            if integral {
                push(
                    found,
                    tokens,
                    Edit::Replace(Value::from(n + 0.5)),
                    "a fraction where an integer is expected".into(),
                );
            }
        }
        Value::Array(items) if !params => {
            let count = |key: &str| object.get(key).and_then(Value::as_u64).map(|n| n as usize);
            if let Some(min) = count("minItems").filter(|min| *min > 0 && *min <= items.len() + 1) {
                let shorter = items.iter().take(min - 1).cloned().collect();
                push(found, tokens, Edit::Replace(Value::Array(shorter)), format!("fewer than minItems {min}"));
            }
            if let (Some(max), Some(first)) = (count("maxItems"), items.first())
                && max < 1024
            {
                let mut longer = items.clone();
                while longer.len() <= max {
                    longer.push(first.clone());
                }
                push(found, tokens, Edit::Replace(Value::Array(longer)), format!("more than maxItems {max}"));
            }
            if object.get("uniqueItems") == Some(&Value::Bool(true))
                && let Some(first) = items.first()
            {
                let mut repeated = items.clone();
                repeated.push(first.clone());
                push(
                    found,
                    tokens,
                    Edit::Replace(Value::Array(repeated)),
                    "a repeated item in a uniqueItems array".into(),
                );
            }
        }
        _ => {}
    }
}

fn string_mutations(
    object: &Map<String, Value>,
    text: &str,
    tokens: &[String],
    params: bool,
    path_param: bool,
    found: &mut Vec<Mutation>,
) {
    let length = text.chars().count();
    let count = |key: &str| object.get(key).and_then(Value::as_u64).map(|n| n as usize);
    if let Some(min) = count("minLength").filter(|min| *min > 0 && !(path_param && *min == 1)) {
        let shorter: String = text.chars().take(min - 1).collect();
        push(found, tokens, Edit::Replace(Value::String(shorter)), format!("shorter than minLength {min}"));
    }
    if let Some(max) = count("maxLength").filter(|max| *max < LONGEST_MUTATION) {
        let mut longer = text.to_string();
        longer.extend(std::iter::repeat_n('x', (max + 1).saturating_sub(length)));
        push(found, tokens, Edit::Replace(Value::String(longer)), format!("longer than maxLength {max}"));
    }
    if let Some(pattern) = object.get("pattern").and_then(Value::as_str) {
        let mut breakers = vec![format!("!{text}"), format!("{text}!"), "!".to_string(), " ".to_string()];
        if !path_param {
            breakers.push(String::new());
        }
        if !params {
            breakers.push(format!("{text}\n"));
        }
        for breaker in breakers {
            push(found, tokens, Edit::Replace(Value::String(breaker)), format!("not matching the pattern {pattern}"));
        }
    }
    if !params {
        // Whatever the schema says, servers refuse U+0000 in a string (PostgreSQL cannot
        // store it); parameters are left out, since a header cannot carry one.
        push(found, tokens, Edit::Replace(Value::String(format!("{text}\u{0}"))), "holding U+0000".into());
    }
    if let Some(format) = object.get("format").and_then(Value::as_str) {
        for broken in [format!("not-a-{format}"), format!("{text}#!")] {
            push(found, tokens, Edit::Replace(Value::String(broken)), format!("not a valid {format}"));
        }
    }
}

/// Mutations of an object's membership: a required property left out, an unknown one
/// added, too few properties.
fn object_mutations(
    object: &Map<String, Value>,
    map: &Map<String, Value>,
    tokens: &[String],
    shape: &Shape,
    depth: usize,
    found: &mut Vec<Mutation>,
) {
    let param_root = matches!(shape, Shape::Params { .. }) && depth == 0;
    if matches!(shape, Shape::Params { .. }) && !param_root {
        return;
    }
    let fixed = match shape {
        Shape::Params { path } => path.clone(),
        Shape::Body => BTreeSet::new(),
    };
    for name in object.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if map.contains_key(name) && !fixed.contains(name) {
            push(found, tokens, Edit::Remove(name.to_string()), format!("required {name} left out"));
        }
    }
    let declared = object.get("properties").and_then(Value::as_object);
    if object.get("additionalProperties") == Some(&Value::Bool(false))
        && !declared.is_some_and(|d| d.contains_key(UNKNOWN_NAME))
    {
        push(
            found,
            tokens,
            Edit::Insert(UNKNOWN_NAME.to_string(), Value::String("x".into())),
            format!("unknown {} {UNKNOWN_NAME}", if param_root { "parameter" } else { "property" }),
        );
    }
    if !param_root
        && object.get("minProperties").and_then(Value::as_u64).is_some_and(|min| min > 0)
        && object.get("required").and_then(Value::as_array).is_none_or(Vec::is_empty)
    {
        push(found, tokens, Edit::Replace(Value::Object(Map::new())), "an object without properties".into());
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
