//! Schema-driven generation on its own: positive values validate against their schema
//! and negative values do not, for every request body and parameter set of the four
//! contracts and for each JSON Schema construct the engine reads, checked with a
//! validator compiled here from the schema (draft 2020-12, formats on).

use conformance::Contract;
use conformance::generate::{Generator, ValueStrategy};
use conformance::mutate::{self, Negative, Shape};
use conformance::schema::Validators;
use proptest::strategy::{SBoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

const CONTRACTS: &[&str] = &["api-gateway.yaml", "service-mesh.yaml", "monitoring.yaml", "performance.yaml"];

fn contract_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi").join(file)
}

fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config { failure_persistence: None, ..Config::default() },
        TestRng::from_seed(RngAlgorithm::XorShift, &[7; 16]),
    )
}

fn samples<T: std::fmt::Debug>(strategy: &SBoxedStrategy<T>, count: usize) -> Vec<T> {
    let mut runner = runner();
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).unwrap_or_else(|e| panic!("no value generated: {e}")).current())
        .collect()
}

/// A validator built here, independently of the engine's cache.
fn validator(contract: &Contract, schema: &Value) -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&contract.standalone_schema(schema))
        .expect("the schema compiles")
}

struct Subject {
    contract: Arc<Contract>,
    generator: Generator,
}

impl Subject {
    fn new(contract: Contract) -> Subject {
        let contract = Arc::new(contract);
        let validators = Arc::new(Validators::new(contract.clone()));
        Subject { generator: Generator::new(contract.clone(), validators), contract }
    }

    fn inline(components: Value) -> Subject {
        let doc = json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}, "components": {"schemas": components}});
        Subject::new(Contract::from_value("inline", doc).expect("an inline contract"))
    }

    fn positive(&self, schema: &Value) -> ValueStrategy {
        self.generator.positive(schema).unwrap_or_else(|e| panic!("cannot generate for {schema}: {e}"))
    }

    fn negative(&self, schema: &Value) -> SBoxedStrategy<Negative> {
        let checker = Arc::new(validator(&self.contract, schema));
        mutate::negative(
            self.contract.clone(),
            schema.clone(),
            self.positive(schema),
            Shape::Body,
            Arc::new(move |value: &Value| checker.is_valid(value)),
        )
    }

    /// Generates `count` positive and negative values of `schema` and checks them.
    fn check(&self, schema: &Value, count: usize) -> Vec<Value> {
        let checker = validator(&self.contract, schema);
        let positives = samples(&self.positive(schema), count);
        for value in &positives {
            let problems: Vec<String> = checker.iter_errors(value).map(|e| e.to_string()).collect();
            assert!(problems.is_empty(), "positive value {value} is invalid by {schema}: {problems:?}");
        }
        for negative in samples(&self.negative(schema), count) {
            assert!(
                !checker.is_valid(&negative.value),
                "negative value {} ({}) is valid by {schema}",
                negative.value,
                negative.description
            );
            assert!(!negative.description.is_empty());
        }
        positives
    }
}

#[test]
fn request_bodies_of_every_contract_generate_valid_and_invalid_values() {
    for file in CONTRACTS {
        let subject = Subject::new(Contract::load(&contract_path(file)).expect("the contract loads"));
        let bodies: Vec<(String, Value)> = subject
            .contract
            .operations
            .iter()
            .filter_map(|op| Some((op.id.clone(), op.body.as_ref()?.json()?.1.clone())))
            .collect();
        assert!(!bodies.is_empty(), "{file} has request bodies");
        for (operation, schema) in bodies {
            let positives = subject.check(&schema, 15);
            let distinct: BTreeSet<String> = positives.iter().map(Value::to_string).collect();
            assert!(distinct.len() > 1, "{file} {operation}: generation is not varied: {positives:?}");
        }
    }
}

/// Whether `value` holds a float with a whole value anywhere (the generator writes some
/// integers that way; `number`s with whole values it writes as integers).
fn holds_whole_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64() && n.as_f64().is_some_and(|x| x.fract() == 0.0),
        Value::Array(items) => items.iter().any(holds_whole_float),
        Value::Object(members) => members.values().any(holds_whole_float),
        _ => false,
    }
}

#[test]
fn integers_are_also_sent_as_whole_floats_in_every_notation() {
    let subject = Subject::inline(json!({}));
    let values = subject.check(&json!({"type": "integer", "minimum": -50, "maximum": 5000}), 200);
    assert!(values.iter().any(|v| v.is_i64() || v.is_u64()), "integer form: {values:?}");
    let floats: Vec<&Value> = values.iter().filter(|v| v.is_f64()).collect();
    assert!(floats.len() > 10, "whole floats: {values:?}");
    let mut notations = BTreeSet::new();
    for value in floats {
        let text = String::from_utf8(conformance::request::json_text(value)).expect("text");
        let back: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(back.as_f64(), value.as_f64(), "{text}");
        let notation = if text.ends_with(".0E0") {
            "k.0E0"
        } else if text.ends_with("0e-1") {
            "k0e-1"
        } else if text.ends_with("e0") {
            "ke0"
        } else if text.ends_with(".0") {
            "k.0"
        } else {
            panic!("{text} is not a whole-float notation")
        };
        notations.insert(notation);
    }
    assert_eq!(notations.len(), 4, "{notations:?}");
    // Other numbers are written as serde_json writes them.
    assert_eq!(
        conformance::request::json_text(&json!({"a": 1.5, "b": 2, "c": -0.25})),
        br#"{"a":1.5,"b":2,"c":-0.25}"#
    );
}

#[test]
fn every_contract_sends_whole_floats_for_its_integer_body_fields() {
    for file in CONTRACTS {
        let subject = Subject::new(Contract::load(&contract_path(file)).expect("the contract loads"));
        let mut with_integers = 0;
        let mut exercised = 0;
        for op in &subject.contract.operations {
            let Some((_, schema)) = op.body.as_ref().and_then(|b| b.json()) else { continue };
            let standalone = subject.contract.standalone_schema(schema);
            if !standalone.to_string().contains(r#""integer""#) {
                continue;
            }
            with_integers += 1;
            let bodies = samples(&subject.positive(schema), 30);
            if bodies.iter().any(holds_whole_float) {
                exercised += 1;
            }
        }
        assert!(with_integers > 0, "{file} has bodies with integers");
        assert!(exercised * 2 >= with_integers, "{file}: only {exercised} of {with_integers} bodies got a whole float");
    }
}

#[test]
fn parameters_of_every_contract_generate_valid_and_invalid_values() {
    for file in CONTRACTS {
        let subject = Subject::new(Contract::load(&contract_path(file)).expect("the contract loads"));
        for op in subject.contract.operations.iter().filter(|op| !op.params.is_empty()) {
            subject.check(&subject.contract.params_schema(op), 10);
        }
    }
}

#[test]
fn references_and_combinators_are_followed() {
    let subject = Subject::inline(json!({
        "Name": {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,10}$"},
        "Named": {"type": "object", "required": ["name"], "properties": {"name": {"$ref": "#/components/schemas/Name"}}},
        "Sized": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 9}}},
        "Both": {"allOf": [{"$ref": "#/components/schemas/Named"}, {"$ref": "#/components/schemas/Sized"}]},
        "Either": {"oneOf": [
            {"type": "object", "additionalProperties": false, "required": ["kind", "url"],
             "properties": {"kind": {"const": "webhook"}, "url": {"type": "string", "format": "uri"}}},
            {"type": "object", "additionalProperties": false, "required": ["kind", "address"],
             "properties": {"kind": {"const": "email"}, "address": {"type": "string", "format": "email"}}}
        ]},
        "Any": {"anyOf": [{"type": "integer", "minimum": 100}, {"type": "string", "maxLength": 3}]}
    }));
    for value in subject.check(&json!({"$ref": "#/components/schemas/Both"}), 30) {
        assert!(value["name"].is_string() && value["size"].as_f64().is_some_and(|n| n.fract() == 0.0), "{value}");
    }
    let kinds: BTreeSet<String> = subject
        .check(&json!({"$ref": "#/components/schemas/Either"}), 40)
        .iter()
        .map(|v| v["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["email".to_string(), "webhook".to_string()]));
    let anys = subject.check(&json!({"$ref": "#/components/schemas/Any"}), 40);
    assert!(anys.iter().any(Value::is_number) && anys.iter().any(Value::is_string), "{anys:?}");
}

#[test]
fn nullable_types_enums_and_consts_are_generated() {
    let subject = Subject::inline(json!({}));
    let nullable = subject.check(&json!({"type": ["string", "null"], "format": "uuid"}), 60);
    assert!(nullable.iter().any(Value::is_null) && nullable.iter().any(Value::is_string), "{nullable:?}");
    let levels = subject.check(&json!({"type": "string", "enum": ["info", "warning", "critical"]}), 40);
    assert_eq!(levels.iter().map(Value::to_string).collect::<BTreeSet<_>>().len(), 3);
    assert!(subject.check(&json!({"const": "Bearer"}), 10).iter().all(|v| v == "Bearer"));
}

#[test]
fn formats_are_generated_valid() {
    let subject = Subject::inline(json!({}));
    for format in ["uuid", "date-time", "date", "time", "uri", "uri-reference", "email", "hostname", "ipv4", "ipv6"] {
        subject.check(&json!({"type": "string", "format": format, "maxLength": 2048}), 30);
    }
    // A format and a pattern together: the format leads, the pattern filters.
    let urls = subject.check(&json!({"type": "string", "format": "uri", "pattern": "^https?://"}), 20);
    assert!(urls.iter().all(|u| u.as_str().is_some_and(|u| u.starts_with("http"))));
}

#[test]
fn bounds_lengths_and_patterns_hold() {
    let subject = Subject::inline(json!({}));
    let ports = subject.check(&json!({"type": "integer", "minimum": 1, "maximum": 65535}), 60);
    let has = |n: f64| ports.iter().any(|p| p.as_f64() == Some(n));
    assert!(has(1.0) && has(65535.0), "bounds are generated: {ports:?}");
    subject.check(&json!({"type": "number", "exclusiveMinimum": 0, "maximum": 100}), 60);
    subject.check(&json!({"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 9}), 30);
    subject.check(&json!({"type": "integer", "multipleOf": 5, "minimum": 3, "maximum": 40}), 30);
    subject.check(&json!({"type": "string", "minLength": 3, "maxLength": 5}), 40);
    let versions = subject.check(
        &json!({"type": "string", "maxLength": 64,
                "pattern": "^(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)(-[0-9A-Za-z.-]+)?(\\+[0-9A-Za-z.-]+)?$"}),
        40,
    );
    assert!(versions.iter().all(|v| v.as_str().is_some_and(|v| v.is_ascii())), "ECMA \\d is ASCII: {versions:?}");
}

#[test]
fn arrays_and_maps_respect_their_constraints() {
    let subject = Subject::inline(json!({
        "Method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]}
    }));
    subject.check(
        &json!({"type": "array", "minItems": 1, "maxItems": 7, "uniqueItems": true,
                "items": {"$ref": "#/components/schemas/Method"}}),
        40,
    );
    let maps = subject.check(
        &json!({"type": "object", "maxProperties": 2, "additionalProperties": {"type": "string", "maxLength": 8}}),
        40,
    );
    assert!(maps.iter().any(|m| m.as_object().is_some_and(|m| !m.is_empty())), "maps get entries: {maps:?}");
    subject.check(
        &json!({"type": "object", "additionalProperties": false, "minProperties": 1,
                "properties": {"a": {"type": "boolean"}, "b": {"type": ["integer", "null"], "minimum": 0}}}),
        40,
    );
}

#[test]
fn negative_values_break_one_stated_thing() {
    let subject = Subject::inline(json!({}));
    let schema = json!({
        "type": "object", "additionalProperties": false, "required": ["port", "name"],
        "properties": {
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8}
        }
    });
    let descriptions: BTreeSet<String> =
        samples(&subject.negative(&schema), 200).into_iter().map(|n| n.description).collect();
    for expected in [
        "/port: above the maximum 65535",
        "/port: below the minimum 1",
        "/: required port left out",
        "/: unknown property x_unexpected_field",
        "/name: longer than maxLength 8",
        "/name: not matching the pattern ^[a-z]+$",
    ] {
        assert!(descriptions.contains(expected), "{expected:?} not among {descriptions:?}");
    }
}
