//! Positive data: proptest strategies that produce JSON values valid by a contract's
//! schema, built from the schema itself (`$ref`, `allOf`/`oneOf`/`anyOf`, type arrays
//! with `null`, `const`, `enum`, bounds, lengths, patterns and formats).
//!
//! Every strategy ends in a filter through the compiled validator, so a value that comes
//! out is valid whatever the construction missed; the construction only has to make valid
//! values likely. Shrinking keeps values valid for the same reason. Invalid data is made
//! from these values by [`crate::mutate`].

use crate::contract::Contract;
use crate::schema::{self, Validators};
use proptest::prelude::*;
use proptest::strategy::{SBoxedStrategy, Union};
use regex_syntax::ParserBuilder;
use regex_syntax::hir::{
    Capture, Class, ClassBytes, ClassBytesRange, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Repetition,
};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A strategy for JSON values.
pub type ValueStrategy = SBoxedStrategy<Value>;

/// Nesting beyond which the generator gives up (recursive schemas without an end).
const MAX_DEPTH: usize = 24;
/// Nesting beyond which optional properties and optional array items are left out, so
/// recursive schemas end.
const OPTIONAL_DEPTH: usize = 8;
/// Array items generated beyond `minItems`.
const EXTRA_ITEMS: usize = 4;
/// Characters generated beyond `minLength` for strings without a pattern or format.
const FREE_CHARACTERS: usize = 24;
/// The longest string generated to hit `maxLength` exactly.
const LONGEST_BOUNDARY_STRING: usize = 4096;
/// Numbers without bounds are drawn from ±this.
const DEFAULT_SPAN: i64 = 1_000_000;

/// Builds strategies from the schemas of one contract.
#[derive(Clone)]
pub struct Generator {
    contract: Arc<Contract>,
    validators: Arc<Validators>,
    /// Whether every optional property (down to [`COMPLETE_DEPTH`]) is present and every
    /// array holds at least one item: the coverage phase's "everything sent" values.
    complete: bool,
}

/// Nesting down to which a complete value holds every optional property.
const COMPLETE_DEPTH: usize = 3;

impl Generator {
    pub fn new(contract: Arc<Contract>, validators: Arc<Validators>) -> Generator {
        Generator { contract, validators, complete: false }
    }

    /// This generator making complete values: every optional property present (down to a
    /// few levels) and no array empty, so that a value exercises every field it can hold.
    pub fn complete(&self) -> Generator {
        Generator { complete: true, ..self.clone() }
    }

    pub fn contract(&self) -> &Arc<Contract> {
        &self.contract
    }

    pub fn validators(&self) -> &Arc<Validators> {
        &self.validators
    }

    /// Values valid by `schema` (as written in the contract, references and all).
    pub fn positive(&self, schema: &Value) -> Result<ValueStrategy, String> {
        let validator = self.validators.get(schema)?;
        let inner = self.build(schema, 0)?;
        Ok(inner.prop_filter("valid by the schema", move |value| validator.is_valid(value)).sboxed())
    }

    /// Values valid by `schema` that also pass `keep` (transport limits, for example).
    pub fn positive_where(
        &self,
        schema: &Value,
        keep: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) -> Result<ValueStrategy, String> {
        Ok(self.positive(schema)?.prop_filter("fit for the request", move |value| keep(value)).sboxed())
    }

    fn build(&self, schema: &Value, depth: usize) -> Result<ValueStrategy, String> {
        if depth > MAX_DEPTH {
            return Err("the schema nests deeper than the generator follows".into());
        }
        let folded = schema::fold(&self.contract, schema)?;
        let object = match &folded {
            Value::Bool(false) => return Err("the schema admits no value".into()),
            Value::Object(object) => object.clone(),
            _ => Map::new(),
        };
        if object.is_empty() {
            return Ok(any_scalar());
        }
        if let Some(value) = object.get("const") {
            return Ok(Just(value.clone()).sboxed());
        }
        if let Some(values) = object.get("enum").and_then(Value::as_array) {
            if values.is_empty() {
                return Err("the enum is empty".into());
            }
            return Ok(proptest::sample::select(values.clone()).sboxed());
        }
        for key in ["oneOf", "anyOf"] {
            let Some(branches) = object.get(key).and_then(Value::as_array) else { continue };
            let mut rest = object.clone();
            rest.remove(key);
            let mut options = Vec::new();
            let mut last_error = format!("{key} has no branches");
            for branch in branches {
                let combined = match schema::fold(&self.contract, branch)? {
                    Value::Object(branch) => Value::Object(schema::merge(rest.clone(), branch)),
                    Value::Bool(false) => continue,
                    _ => Value::Object(rest.clone()),
                };
                // A branch the generator cannot build is skipped; the others still cover the union.
                match self.build(&combined, depth + 1) {
                    Ok(strategy) => options.push(strategy),
                    Err(error) => last_error = error,
                }
            }
            if options.is_empty() {
                return Err(last_error);
            }
            return Ok(Union::new(options).sboxed());
        }
        let mut options = Vec::new();
        let mut last_error = "the schema admits no type".to_string();
        for name in schema::types(&folded) {
            // Null is one choice among several; weight the others up so that nullable
            // fields still carry data most of the time.
            let weight = if name == "null" { 1 } else { 3 };
            match self.typed(&object, name, depth) {
                Ok(strategy) => options.push((weight, strategy)),
                Err(error) => last_error = error,
            }
        }
        match options.len() {
            0 => Err(last_error),
            1 => Ok(options.remove(0).1),
            _ => Ok(Union::new_weighted(options).sboxed()),
        }
    }

    fn typed(&self, schema: &Map<String, Value>, name: &str, depth: usize) -> Result<ValueStrategy, String> {
        match name {
            "null" => Ok(Just(Value::Null).sboxed()),
            "boolean" => Ok(any::<bool>().prop_map(Value::Bool).sboxed()),
            "integer" => integer(schema),
            "number" => number(schema),
            "string" => string(schema),
            "array" => self.array(schema, depth),
            "object" => self.object(schema, depth),
            other => Err(format!("unknown type {other}")),
        }
    }

    fn array(&self, schema: &Map<String, Value>, depth: usize) -> Result<ValueStrategy, String> {
        let items = schema.get("items").cloned().unwrap_or(Value::Bool(true));
        let lo = usize_keyword(schema, "minItems").unwrap_or(0);
        let declared_hi = usize_keyword(schema, "maxItems");
        if declared_hi.is_some_and(|hi| hi < lo) {
            return Err("maxItems is below minItems".into());
        }
        if declared_hi == Some(0) {
            return Ok(Just(Value::Array(Vec::new())).sboxed());
        }
        let item = self.build(&items, depth + 1).map_err(|e| format!("items: {e}"))?;
        let extra = if depth >= OPTIONAL_DEPTH { 0 } else { EXTRA_ITEMS };
        let hi = declared_hi.unwrap_or(usize::MAX).min(lo + extra);
        let lo = if self.complete && depth < COMPLETE_DEPTH { lo.max(1).min(hi) } else { lo };
        let unique = schema.get("uniqueItems") == Some(&Value::Bool(true));
        Ok(proptest::collection::vec(item, lo..=hi)
            .prop_map(move |items| if unique { distinct(items) } else { items })
            .prop_filter("enough distinct items", move |items| items.len() >= lo)
            .prop_map(Value::Array)
            .sboxed())
    }

    fn object(&self, schema: &Map<String, Value>, depth: usize) -> Result<ValueStrategy, String> {
        let properties = schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
        let required: BTreeSet<String> =
            schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(as_string).collect();
        let additional = schema.get("additionalProperties").filter(|a| a.is_object()).cloned();

        let mut fields: Vec<SBoxedStrategy<Option<(String, Value)>>> = Vec::new();
        for (name, sub) in &properties {
            let key = name.clone();
            if required.contains(name) {
                let strategy = self.build(sub, depth + 1).map_err(|e| format!("/{name}: {e}"))?;
                fields.push(strategy.prop_map(move |value| Some((key.clone(), value))).sboxed());
            } else if depth < OPTIONAL_DEPTH {
                // An optional property the generator cannot build is left out rather than
                // making the whole object impossible.
                if let Ok(strategy) = self.build(sub, depth + 1) {
                    let pair = strategy.prop_map(move |value| (key.clone(), value));
                    if self.complete && depth < COMPLETE_DEPTH {
                        fields.push(pair.prop_map(Some).sboxed());
                    } else {
                        fields.push(proptest::option::weighted(0.5, pair).sboxed());
                    }
                }
            }
        }
        for name in required.iter().filter(|name| !properties.contains_key(*name)) {
            let sub = additional.clone().unwrap_or(Value::Bool(true));
            let key = name.clone();
            let strategy = self.build(&sub, depth + 1).map_err(|e| format!("/{name}: {e}"))?;
            fields.push(strategy.prop_map(move |value| Some((key.clone(), value))).sboxed());
        }

        let min_properties = usize_keyword(schema, "minProperties").unwrap_or(0);
        let max_properties = usize_keyword(schema, "maxProperties").unwrap_or(usize::MAX);
        let extras: SBoxedStrategy<Vec<(String, Value)>> = match &additional {
            Some(sub) if depth < OPTIONAL_DEPTH => {
                let value = self.build(sub, depth + 1).map_err(|e| format!("additionalProperties: {e}"))?;
                let key: SBoxedStrategy<String> = match schema.get("propertyNames") {
                    Some(names) => self
                        .build(names, depth + 1)
                        .map_err(|e| format!("propertyNames: {e}"))?
                        .prop_filter_map("a string key", |v| v.as_str().map(String::from))
                        .sboxed(),
                    None => regex("[a-z][a-z0-9_]{0,11}"),
                };
                let room = max_properties.saturating_sub(required.len()).min(3);
                proptest::collection::vec((key, value), 0..=room).sboxed()
            }
            _ => Just(Vec::new()).sboxed(),
        };
        let declared: BTreeSet<String> = properties.keys().cloned().collect();
        Ok((fields, extras)
            .prop_map(move |(fields, extras)| {
                let mut map = Map::new();
                for (key, value) in fields.into_iter().flatten() {
                    map.insert(key, value);
                }
                for (key, value) in extras {
                    if !declared.contains(&key) && !map.contains_key(&key) {
                        map.insert(key, value);
                    }
                }
                map
            })
            .prop_filter("property count within bounds", move |map| {
                (min_properties..=max_properties).contains(&map.len())
            })
            .prop_map(Value::Object)
            .sboxed())
    }
}

fn as_string(value: &Value) -> Option<String> {
    value.as_str().map(String::from)
}

fn usize_keyword(schema: &Map<String, Value>, key: &str) -> Option<usize> {
    schema.get(key).and_then(Value::as_u64).map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Items in order with later duplicates dropped.
fn distinct(items: Vec<Value>) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    items.into_iter().filter(|item| seen.insert(item.to_string())).collect()
}

/// A small value of any type, for schemas that say nothing.
fn any_scalar() -> ValueStrategy {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        regex("[a-z0-9 ]{0,12}").prop_map(Value::String),
    ]
    .sboxed()
}

fn integer(schema: &Map<String, Value>) -> Result<ValueStrategy, String> {
    let (lo, hi) = integer_bounds(schema)?;
    let step = schema.get("multipleOf").and_then(Value::as_f64).filter(|m| *m >= 1.0 && m.fract() == 0.0);
    if let Some(step) = step {
        let step = step as i64;
        let (first, last) = (lo.div_euclid(step) + i64::from(lo.rem_euclid(step) != 0), hi.div_euclid(step));
        if first > last {
            return Err(format!("no multiple of {step} lies within the bounds"));
        }
        return Ok((first..=last, proptest::bool::weighted(WHOLE_FLOAT_SHARE))
            .prop_map(move |(k, as_float)| integer_value(k.saturating_mul(step), as_float))
            .sboxed());
    }
    // Bounds are where implementations go wrong, so they come up often; small values near
    // the lower bound keep requests cheap (timeouts, page sizes, wait times).
    let near = lo.saturating_add(16).min(hi);
    Ok((
        Union::new_weighted(vec![
            (2, Just(lo).sboxed()),
            (2, Just(hi).sboxed()),
            (3, (lo..=near).sboxed()),
            (5, (lo..=hi).sboxed()),
        ]),
        proptest::bool::weighted(WHOLE_FLOAT_SHARE),
    )
        .prop_map(|(k, as_float)| integer_value(k, as_float))
        .sboxed())
}

/// How often an integer is written as a whole float (`3.0`, `3e0`, …; see
/// [`crate::request::json_text`]), which JSON Schema counts as an integer and servers must
/// therefore accept wherever the contract says `integer`.
const WHOLE_FLOAT_SHARE: f64 = 0.25;

/// An integer as JSON: integer form, or a float with the same whole value when asked and
/// when a float holds it exactly.
pub fn integer_value(k: i64, as_float: bool) -> Value {
    if as_float && k.unsigned_abs() < 1 << 53 { Value::from(k as f64) } else { Value::from(k) }
}

/// The inclusive integer range a schema allows (3.1 numeric exclusive bounds and the 3.0
/// boolean form both count).
fn integer_bounds(schema: &Map<String, Value>) -> Result<(i64, i64), String> {
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    let flag = |key: &str| schema.get(key) == Some(&Value::Bool(true));
    let mut lo = number("minimum").map(f64::ceil);
    if let Some(minimum) = lo
        && flag("exclusiveMinimum")
    {
        lo = Some(minimum + 1.0);
    }
    if let Some(exclusive) = number("exclusiveMinimum") {
        let bound = exclusive.floor() + 1.0;
        lo = Some(lo.map_or(bound, |l| l.max(bound)));
    }
    let mut hi = number("maximum").map(f64::floor);
    if let Some(maximum) = hi
        && flag("exclusiveMaximum")
    {
        hi = Some(maximum - 1.0);
    }
    if let Some(exclusive) = number("exclusiveMaximum") {
        let bound = exclusive.ceil() - 1.0;
        hi = Some(hi.map_or(bound, |h| h.min(bound)));
    }
    let span =
        if schema.get("format").and_then(Value::as_str) == Some("int32") { i64::from(i32::MAX) } else { DEFAULT_SPAN };
    // `as` saturates, which is what bounds beyond i64 should do.
    let (lo, hi) = match (lo.map(|l| l as i64), hi.map(|h| h as i64)) {
        (Some(lo), Some(hi)) => (lo, hi),
        (Some(lo), None) => (lo, lo.saturating_add(span)),
        (None, Some(hi)) => (hi.saturating_sub(span), hi),
        (None, None) => (-span, span),
    };
    if lo > hi {
        return Err(format!("no integer lies between {lo} and {hi}"));
    }
    Ok((lo, hi))
}

/// A float as JSON: integral values as JSON integers, which every `number` accepts.
fn number_value(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 { Value::from(x as i64) } else { Value::from(x) }
}

fn number(schema: &Map<String, Value>) -> Result<ValueStrategy, String> {
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    let flag = |key: &str| schema.get(key) == Some(&Value::Bool(true));
    // (bound, exclusive)
    let mut lo: Option<(f64, bool)> = number("minimum").map(|m| (m, flag("exclusiveMinimum")));
    if let Some(exclusive) = number("exclusiveMinimum")
        && lo.is_none_or(|(l, _)| exclusive >= l)
    {
        lo = Some((exclusive, true));
    }
    let mut hi: Option<(f64, bool)> = number("maximum").map(|m| (m, flag("exclusiveMaximum")));
    if let Some(exclusive) = number("exclusiveMaximum")
        && hi.is_none_or(|(h, _)| exclusive <= h)
    {
        hi = Some((exclusive, true));
    }
    let span = DEFAULT_SPAN as f64;
    let ((lo, lo_exclusive), (hi, hi_exclusive)) = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo, hi),
        (Some(lo), None) => (lo, (lo.0 + span, false)),
        (None, Some(hi)) => ((hi.0 - span, false), hi),
        (None, None) => ((-span, false), (span, false)),
    };
    if lo > hi || (lo == hi && (lo_exclusive || hi_exclusive)) {
        return Err(format!("no number lies between {lo} and {hi}"));
    }
    let mut options: Vec<(u32, SBoxedStrategy<f64>)> = Vec::new();
    if !lo_exclusive {
        options.push((2, Just(lo).sboxed()));
    }
    if !hi_exclusive {
        options.push((2, Just(hi).sboxed()));
    }
    if lo < hi {
        // Three decimals keep values exact through every JSON parser on the way, so an
        // echoed value compares equal to the one sent.
        options.push((6, (lo..hi).prop_map(|x| (x * 1000.0).round() / 1000.0).sboxed()));
        let (first, last) = (lo.ceil(), hi.floor());
        if first <= last && first.abs() < 1e15 && last.abs() < 1e15 {
            options.push((3, (first as i64..=last as i64).prop_map(|i| i as f64).sboxed()));
        }
    }
    let within = move |x: &f64| {
        x.is_finite()
            && (if lo_exclusive { *x > lo } else { *x >= lo })
            && (if hi_exclusive { *x < hi } else { *x <= hi })
    };
    Ok(Union::new_weighted(options).prop_filter("within the bounds", within).prop_map(number_value).sboxed())
}

fn string(schema: &Map<String, Value>) -> Result<ValueStrategy, String> {
    let min = usize_keyword(schema, "minLength").unwrap_or(0);
    let max = usize_keyword(schema, "maxLength");
    if max.is_some_and(|max| max < min) {
        return Err("maxLength is below minLength".into());
    }
    let pattern = schema.get("pattern").and_then(Value::as_str);
    // A format says more about the shape than a pattern usually does (`uri` with
    // `^https?://`), so it leads and the pattern filters.
    let base = match schema.get("format").and_then(Value::as_str).and_then(format_strategy) {
        Some(strategy) => strategy,
        None => match pattern {
            Some(pattern) => pattern_strategy(pattern)?,
            None => free_string(min, max),
        },
    };
    let mut local = Map::new();
    local.insert("type".into(), Value::String("string".into()));
    for key in ["minLength", "maxLength", "pattern", "format"] {
        if let Some(value) = schema.get(key) {
            local.insert(key.into(), value.clone());
        }
    }
    let validator = Arc::new(schema::compile(&Value::Object(local))?);
    Ok(base
        .prop_map(Value::String)
        .prop_filter("a string valid by its own constraints", move |value| validator.is_valid(value))
        .sboxed())
}

fn free_string(min: usize, max: Option<usize>) -> SBoxedStrategy<String> {
    let hi = max.unwrap_or(usize::MAX).min(min + FREE_CHARACTERS);
    let characters = Union::new_weighted(vec![
        (
            6,
            prop_oneof![
                proptest::char::range('a', 'z'),
                proptest::char::range('A', 'Z'),
                proptest::char::range('0', '9')
            ]
            .sboxed(),
        ),
        (
            2,
            proptest::sample::select(vec![
                ' ', '-', '_', '.', '/', ':', '@', '!', '%', '+', '=', ',', '\'', '"', '\\', '&', '#', '?',
            ])
            .sboxed(),
        ),
        // Any printable character: implementations must carry text that is not ASCII.
        (2, proptest::char::any().prop_filter("printable", |c| !c.is_control()).sboxed()),
    ])
    .sboxed();
    let text = |range: std::ops::RangeInclusive<usize>| {
        proptest::collection::vec(characters.clone(), range).prop_map(|chars| chars.into_iter().collect::<String>())
    };
    let mut options = vec![(8, text(min..=hi).sboxed())];
    if let Some(max) = max
        && max > hi
        && max <= LONGEST_BOUNDARY_STRING
    {
        options.push((1, text(max..=max).sboxed()));
    }
    Union::new_weighted(options).sboxed()
}

/// Strings matching `pattern`. Patterns are ECMA-262 as the contracts write them, within
/// the subset Rust's `regex` reads; anchors are dropped because a generated string is a
/// whole match already.
pub fn pattern_strategy(pattern: &str) -> Result<SBoxedStrategy<String>, String> {
    // ECMA-262 classes such as `\d` and `\w` are ASCII; read the pattern without Unicode
    // classes first so that generated digits are ones the validator accepts, and fall back
    // to Unicode mode for patterns that need it (`.` or negated classes).
    let parsed = match ParserBuilder::new().unicode(false).build().parse(pattern) {
        Ok(parsed) => parsed,
        Err(_) => ParserBuilder::new()
            .build()
            .parse(pattern)
            .map_err(|e| format!("pattern {pattern:?} cannot be read: {e}"))?,
    };
    let strategy = proptest::string::string_regex_parsed(&without_looks(&parsed))
        .map_err(|e| format!("pattern {pattern:?} cannot be generated from: {e}"))?;
    Ok(strategy.sboxed())
}

/// `hir` without look-arounds (anchors), and with U+0000 taken out of every class: servers
/// refuse strings holding it whatever the pattern says (PostgreSQL cannot store it), so a
/// valid value never carries one.
fn without_looks(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Look(_) => Hir::empty(),
        HirKind::Class(Class::Unicode(class)) => {
            let mut class = class.clone();
            class.difference(&ClassUnicode::new([ClassUnicodeRange::new('\0', '\0')]));
            Hir::class(Class::Unicode(class))
        }
        HirKind::Class(Class::Bytes(class)) => {
            let mut class = class.clone();
            class.difference(&ClassBytes::new([ClassBytesRange::new(0, 0)]));
            Hir::class(Class::Bytes(class))
        }
        HirKind::Repetition(repetition) => {
            Hir::repetition(Repetition { sub: Box::new(without_looks(&repetition.sub)), ..repetition.clone() })
        }
        HirKind::Capture(capture) => {
            Hir::capture(Capture { sub: Box::new(without_looks(&capture.sub)), ..capture.clone() })
        }
        HirKind::Concat(parts) => Hir::concat(parts.iter().map(without_looks).collect()),
        HirKind::Alternation(parts) => Hir::alternation(parts.iter().map(without_looks).collect()),
        _ => hir.clone(),
    }
}

/// Strings from a regular expression the engine itself wrote.
fn regex(pattern: &str) -> SBoxedStrategy<String> {
    match proptest::string::string_regex(pattern) {
        Ok(strategy) => strategy.sboxed(),
        Err(error) => unreachable!("built-in pattern {pattern:?} does not compile: {error}"),
    }
}

fn date() -> SBoxedStrategy<String> {
    (1970u32..2100, 1u32..=12, 1u32..=28).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")).sboxed()
}

fn time() -> SBoxedStrategy<String> {
    let fraction = proptest::option::of(0u32..1000).prop_map(|f| f.map(|f| format!(".{f:03}")).unwrap_or_default());
    let offset = proptest::sample::select(vec!["Z", "Z", "+00:00", "+02:00", "-05:30"]);
    (0u32..24, 0u32..60, 0u32..60, fraction, offset)
        .prop_map(|(h, m, s, fraction, offset)| format!("{h:02}:{m:02}:{s:02}{fraction}{offset}"))
        .sboxed()
}

fn uri() -> SBoxedStrategy<String> {
    regex(
        "(http|https)://[a-z]([a-z0-9-]{0,10}[a-z0-9])?\\.(com|org|net|example)(:[1-9][0-9]{0,3})?(/[a-z0-9._~-]{1,10}){0,3}(\\?[a-z]{1,6}=[a-z0-9]{1,6})?",
    )
}

fn format_strategy(format: &str) -> Option<SBoxedStrategy<String>> {
    Some(match format {
        "uuid" => any::<[u8; 16]>().prop_map(uuid_text).sboxed(),
        "date-time" => (date(), time()).prop_map(|(d, t)| format!("{d}T{t}")).sboxed(),
        "date" => date(),
        "time" => time(),
        "email" | "idn-email" => {
            regex("[a-z][a-z0-9]{0,11}(\\.[a-z0-9]{1,8})?@[a-z][a-z0-9]{0,11}\\.(com|org|net|example)")
        }
        "hostname" | "idn-hostname" => {
            regex("[a-z]([a-z0-9-]{0,14}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,14}[a-z0-9])?){0,2}")
        }
        "ipv4" => any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}")).sboxed(),
        "ipv6" => any::<[u16; 8]>()
            .prop_map(|groups| groups.iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":"))
            .sboxed(),
        "uri" | "iri" => uri(),
        "uri-reference" | "iri-reference" => Union::new(vec![uri(), regex("(/[a-z0-9._~-]{1,12}){1,4}")]).sboxed(),
        "json-pointer" => regex("(/[a-z0-9_]{1,8}){0,3}"),
        "duration" => regex("P([1-9][0-9]{0,2}D|T[1-9][0-9]{0,2}[HMS])"),
        _ => return None,
    })
}

/// A version 4 UUID from 16 random bytes.
fn uuid_text(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}
