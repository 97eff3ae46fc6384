//! Breaking changes between two versions of a contract, as `cargo xtask codegen --check`
//! reports them against a baseline (the last release tag, see [`baseline`]).
//!
//! A change is breaking when a client built against the baseline can fail against a server
//! built from the new contract:
//!
//! - **requests** (parameters and bodies): the new contract must accept every request the
//!   baseline accepted. Removed operations, removed or newly required parameters and body
//!   fields (servers refuse unknown fields, so a removed field is refused when sent),
//!   narrowed types, tightened bounds, lengths, patterns and formats, removed enum values,
//!   new scopes.
//! - **responses**: every answer of the new contract must still be readable by the
//!   baseline's clients. Removed response fields, fields no longer always present, widened
//!   types, new enum values, loosened constraints (typed clients check them), removed
//!   success statuses.
//!
//! Additions are not breaking: new operations, new optional request fields and parameters,
//! new response fields (the generated clients ignore fields they do not know), new enum
//! values accepted in requests, widened request constraints. Schemas are compared
//! keyword by keyword, following `$ref`s; `allOf`/`anyOf`/`oneOf` are compared as written
//! and any change to them is reported, since it cannot be judged field by field.

use crate::contract::{Contract, Operation, ParamLocation};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// One breaking change: where (`file#/json/pointer` of the new contract, or of the
/// baseline for something removed) and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Breaking {
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for Breaking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Which way a schema is read: what clients send, or what they receive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

struct Comparison<'a> {
    old: &'a Contract,
    new: &'a Contract,
    file: String,
    found: Vec<Breaking>,
    /// `$ref` pairs being compared, so recursive schemas end.
    visiting: BTreeSet<(String, String)>,
}

/// The breaking changes from `old` to `new` (two versions of one contract).
pub fn breaking_changes(old: &Contract, new: &Contract) -> Vec<Breaking> {
    let mut comparison = Comparison { old, new, file: new.name.clone(), found: Vec::new(), visiting: BTreeSet::new() };
    for before in &old.operations {
        match new.operations.iter().find(|op| op.id == before.id) {
            None => comparison.report(&before.pointer, format!("operation {} was removed", before.id)),
            Some(after) => comparison.operation(before, after),
        }
    }
    comparison.found.sort();
    comparison.found.dedup();
    comparison.found
}

impl Comparison<'_> {
    fn report(&mut self, pointer: &str, message: String) {
        self.found.push(Breaking { location: format!("{}#{pointer}", self.file), message });
    }

    fn operation(&mut self, before: &Operation, after: &Operation) {
        let at = after.pointer.clone();
        if (before.method.as_str(), before.path.as_str()) != (after.method.as_str(), after.path.as_str()) {
            self.report(
                &at,
                format!("{} moved from {} {} to {} {}", after.id, before.method, before.path, after.method, after.path),
            );
        }
        let old_scopes: BTreeSet<&String> = before.scopes.iter().flatten().collect();
        for scope in after.scopes.iter().flatten().filter(|s| !old_scopes.contains(s)) {
            self.report(&format!("{at}/security"), format!("{} now needs the scope {scope}", after.id));
        }

        for old_param in &before.params {
            let name = &old_param.name;
            let found =
                after.params.iter().find(|p| p.name.eq_ignore_ascii_case(name) && p.location == old_param.location);
            match found {
                None if old_param.location != ParamLocation::Header => self.report(
                    &old_param.pointer,
                    format!(
                        "{} parameter {name} was removed (requests that send it are refused)",
                        old_param.location.as_str()
                    ),
                ),
                None => {}
                Some(new_param) => {
                    if new_param.required && !old_param.required {
                        self.report(&new_param.pointer, format!("parameter {name} is now required"));
                    }
                    let pointer = format!("{}/schema", new_param.pointer);
                    self.schema(&old_param.schema, &new_param.schema, Direction::Request, &pointer);
                }
            }
        }
        for new_param in &after.params {
            let existed = before
                .params
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(&new_param.name) && p.location == new_param.location);
            if !existed && new_param.required {
                self.report(&new_param.pointer, format!("new required parameter {}", new_param.name));
            }
        }

        match (&before.body, &after.body) {
            (None, Some(body)) => self.report(&body.pointer, "a request body is now required".into()),
            (Some(old_body), Some(new_body)) => {
                if let (Some((_, old)), Some((media, new))) = (old_body.json(), new_body.json()) {
                    let pointer =
                        format!("{}/content/{}/schema", new_body.pointer, crate::contract::pointer_token(media));
                    self.schema(old, new, Direction::Request, &pointer);
                }
            }
            _ => {}
        }

        for old_response in before.success_responses() {
            let Some(new_response) = after.responses.iter().find(|r| r.status == old_response.status) else {
                self.report(&old_response.pointer, format!("success status {} was removed", old_response.status));
                continue;
            };
            match (old_response.content.first(), new_response.content.first()) {
                (Some(old), Some(new)) => {
                    let pointer = format!(
                        "{}/content/{}/schema",
                        new_response.pointer,
                        crate::contract::pointer_token(&new.media_type)
                    );
                    self.schema(&new.schema, &old.schema, Direction::Response, &pointer);
                }
                (Some(_), None) => self.report(&new_response.pointer, "the response body was removed".into()),
                _ => {}
            }
        }
    }

    /// Follows `$ref`s of `schema` in `doc`.
    fn resolve<'d>(doc: &'d Value, schema: &'d Value) -> (&'d Value, Option<String>) {
        let mut current = schema;
        let mut name = None;
        for _ in 0..pake_contract::MAX_REF_HOPS {
            match current.get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    name = Some(reference.to_string());
                    match doc.pointer(reference.trim_start_matches('#')) {
                        Some(target) => current = target,
                        None => break,
                    }
                }
                None => break,
            }
        }
        (current, name)
    }

    /// Compares two schemas. For requests `from` is the baseline's and `to` the new one, and
    /// what `from` accepts that `to` does not is reported; for responses the roles swap
    /// (`from` is what the new server sends, `to` what the baseline's clients read).
    fn schema(&mut self, from: &Value, to: &Value, direction: Direction, pointer: &str) {
        let (from_doc, to_doc) = match direction {
            Direction::Request => (&self.old.doc, &self.new.doc),
            Direction::Response => (&self.new.doc, &self.old.doc),
        };
        let (from, from_ref) = Self::resolve(from_doc, from);
        let (to, to_ref) = Self::resolve(to_doc, to);
        if let (Some(a), Some(b)) = (&from_ref, &to_ref) {
            let pair = (a.clone(), b.clone());
            if !self.visiting.insert(pair.clone()) {
                return;
            }
            self.compare(from, to, direction, pointer);
            self.visiting.remove(&pair);
        } else {
            self.compare(from, to, direction, pointer);
        }
    }

    fn compare(&mut self, from: &Value, to: &Value, direction: Direction, pointer: &str) {
        let (Some(f), Some(t)) = (from.as_object(), to.as_object()) else {
            if from != to && to != &Value::Bool(true) {
                self.report(pointer, self.say(direction, "the schema changed to one that admits less"));
            }
            return;
        };
        for key in ["allOf", "anyOf", "oneOf", "not"] {
            if f.get(key) != t.get(key) {
                self.report(pointer, format!("{key} changed; a change to a combinator is not judged field by field"));
            }
        }

        // Types (`integer` is a `number`).
        let types = |schema: &serde_json::Map<String, Value>| -> Option<BTreeSet<String>> {
            match schema.get("type")? {
                Value::String(one) => Some(BTreeSet::from([one.clone()])),
                Value::Array(many) => Some(many.iter().filter_map(Value::as_str).map(String::from).collect()),
                _ => None,
            }
        };
        if let Some(to_types) = types(t) {
            let from_types = types(f).unwrap_or_else(|| {
                ["null", "boolean", "integer", "number", "string", "array", "object"].map(String::from).into()
            });
            let lost: Vec<&String> = from_types
                .iter()
                .filter(|ty| !(to_types.contains(*ty) || (*ty == "integer" && to_types.contains("number"))))
                .collect();
            if !lost.is_empty() {
                let lost: Vec<&str> = lost.iter().map(|s| s.as_str()).collect();
                self.report(pointer, self.say(direction, &format!("type {}", lost.join(", "))));
            }
        }

        // Enumerations (a const is an enum of one).
        let values = |schema: &serde_json::Map<String, Value>| -> Option<Vec<Value>> {
            schema.get("const").map(|c| vec![c.clone()]).or_else(|| schema.get("enum")?.as_array().cloned())
        };
        if let Some(to_values) = values(t) {
            match values(f) {
                None => self.report(pointer, self.say(direction, "values outside the new enum")),
                Some(from_values) => {
                    let lost: Vec<String> =
                        from_values.iter().filter(|v| !to_values.contains(v)).map(Value::to_string).collect();
                    if !lost.is_empty() {
                        self.report(pointer, self.say(direction, &format!("the enum value(s) {}", lost.join(", "))));
                    }
                }
            }
        }

        // Lower and upper bounds: `to` must not be tighter than `from`.
        let number = |schema: &serde_json::Map<String, Value>, key: &str| schema.get(key).and_then(Value::as_f64);
        for key in ["minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"] {
            if let Some(bound) = number(t, key)
                && number(f, key).is_none_or(|old| bound > old)
            {
                let was = self.was(direction, number(f, key));
                self.report(pointer, self.say(direction, &format!("values below {key} {bound} ({was})")));
            }
        }
        for key in ["maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"] {
            if let Some(bound) = number(t, key)
                && number(f, key).is_none_or(|old| bound < old)
            {
                let was = self.was(direction, number(f, key));
                self.report(pointer, self.say(direction, &format!("values above {key} {bound} ({was})")));
            }
        }
        for key in ["pattern", "format", "multipleOf"] {
            if let Some(constraint) = t.get(key)
                && f.get(key) != Some(constraint)
            {
                let other = f.get(key).map_or("none".into(), Value::to_string);
                let what = format!(
                    "values outside {key} {constraint} ({})",
                    match direction {
                        Direction::Request => format!("was {other}"),
                        Direction::Response => format!("now {other}"),
                    }
                );
                self.report(pointer, self.say(direction, &what));
            }
        }
        if t.get("uniqueItems") == Some(&Value::Bool(true)) && f.get("uniqueItems") != Some(&Value::Bool(true)) {
            self.report(pointer, self.say(direction, "repeated items (uniqueItems)"));
        }

        if let (Some(from_items), Some(to_items)) = (f.get("items"), t.get("items")) {
            self.schema(from_items, to_items, direction, &format!("{pointer}/items"));
        }
        self.object(f, t, direction, pointer);
    }

    fn object(
        &mut self,
        f: &serde_json::Map<String, Value>,
        t: &serde_json::Map<String, Value>,
        direction: Direction,
        pointer: &str,
    ) {
        let empty = serde_json::Map::new();
        let from_properties = f.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let to_properties = t.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        let required = |schema: &serde_json::Map<String, Value>| -> BTreeSet<String> {
            schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        };
        let (from_required, to_required) = (required(f), required(t));
        let token = crate::contract::pointer_token;
        match direction {
            Direction::Request => {
                // from = baseline, to = new.
                for (name, old) in from_properties {
                    match to_properties.get(name) {
                        Some(new) => self.schema(old, new, direction, &format!("{pointer}/properties/{}", token(name))),
                        None if t.get("additionalProperties") == Some(&Value::Bool(false)) => self.report(
                            pointer,
                            format!("request field {name} was removed (requests that send it are refused)"),
                        ),
                        None => {}
                    }
                }
                for name in to_required.difference(&from_required) {
                    let what =
                        if from_properties.contains_key(name) { "is now required" } else { "is new and required" };
                    self.report(pointer, format!("request field {name} {what}"));
                }
            }
            Direction::Response => {
                // from = new, to = baseline.
                for (name, old) in to_properties {
                    match from_properties.get(name) {
                        Some(new) => self.schema(new, old, direction, &format!("{pointer}/properties/{}", token(name))),
                        None => self.report(pointer, format!("response field {name} was removed")),
                    }
                }
                for name in to_required.difference(&from_required) {
                    if from_properties.contains_key(name) {
                        self.report(pointer, format!("response field {name} is no longer always present"));
                    }
                }
            }
        }
        if let (Some(from_map), Some(to_map)) = (f.get("additionalProperties"), t.get("additionalProperties"))
            && from_map.is_object()
        {
            self.schema(from_map, to_map, direction, &format!("{pointer}/additionalProperties"));
        }
    }

    /// The other side's bound, named by what it is: the baseline's for requests, the new
    /// contract's for responses.
    fn was(&self, direction: Direction, bound: Option<f64>) -> String {
        let bound = bound.map_or("none".into(), |b| b.to_string());
        match direction {
            Direction::Request => format!("was {bound}"),
            Direction::Response => format!("now {bound}"),
        }
    }

    fn say(&self, direction: Direction, what: &str) -> String {
        match direction {
            Direction::Request => format!("requests are narrowed: {what} no longer accepted"),
            Direction::Response => {
                format!("responses are widened: {what} may now be answered, which clients of the baseline refuse")
            }
        }
    }
}

/// The revision breaking changes are judged against.
pub struct Baseline {
    /// A git revision (tag, commit, `HEAD`).
    pub revision: String,
    /// How it was chosen, for the report.
    pub how: String,
}

/// The baseline: `since` when given (`--since REV`), else the last release tag reachable
/// from `HEAD` (`git describe --tags --abbrev=0`), else `HEAD` itself: before the first
/// release there is no published contract to keep, and comparing with the last commit
/// still catches a breaking edit before it is committed. `None` when `root` is not a git
/// work tree (a source archive), where there is nothing to compare with.
pub fn baseline(root: &Path, since: Option<&str>) -> Result<Option<Baseline>> {
    if let Some(since) = since {
        git(root, &["rev-parse", "--verify", "--quiet", &format!("{since}^{{commit}}")])
            .with_context(|| format!("--since {since} is not a revision of this repository"))?;
        return Ok(Some(Baseline { revision: since.to_string(), how: format!("{since} (--since)") }));
    }
    if git(root, &["rev-parse", "--verify", "--quiet", "HEAD"]).is_err() {
        return Ok(None);
    }
    match git(root, &["describe", "--tags", "--abbrev=0", "HEAD"]) {
        Ok(tag) => {
            let tag = tag.trim().to_string();
            Ok(Some(Baseline { how: format!("{tag} (the last release tag)"), revision: tag }))
        }
        Err(_) => Ok(Some(Baseline {
            revision: "HEAD".into(),
            how: "HEAD (no release tag yet; tag a release, or pass --since REV, to compare with it)".into(),
        })),
    }
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git").arg("-C").arg(root).args(args).output().context("running git")?;
    if !output.status.success() {
        bail!("git {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The contract `file` (under `openapi/`) as it was at `revision`; `None` when it did not
/// exist then.
pub fn contract_at(root: &Path, revision: &str, file: &str) -> Result<Option<Contract>> {
    let Ok(text) = git(root, &["show", &format!("{revision}:openapi/{file}")]) else {
        return Ok(None);
    };
    let doc: Value = serde_yaml::from_str(&text).with_context(|| format!("parsing openapi/{file} at {revision}"))?;
    Ok(Some(Contract::from_value(file, doc)?))
}

/// The major version of `info.version` (`2` of `2.1.0`).
fn major(contract: &Contract) -> Option<u64> {
    contract.doc.pointer("/info/version")?.as_str()?.split('.').next()?.parse().ok()
}

/// What the comparison with the baseline found, per contract.
pub struct Report {
    pub baseline: Baseline,
    /// Breaking changes that fail the check.
    pub breaking: Vec<Breaking>,
    /// Breaking changes allowed because the contract's major version was raised.
    pub allowed: Vec<Breaking>,
}

/// Compares every contract in `contracts` with its version at the baseline. A contract
/// whose `info.version` major is above the baseline's may break (its changes are listed
/// as allowed); a contract the baseline did not have is new.
pub fn check(root: &Path, contracts: &[Contract], since: Option<&str>) -> Result<Option<Report>> {
    let Some(baseline) = baseline(root, since)? else { return Ok(None) };
    let mut report = Report { baseline, breaking: Vec::new(), allowed: Vec::new() };
    for contract in contracts {
        let Some(old) = contract_at(root, &report.baseline.revision, &contract.name)? else { continue };
        let found = breaking_changes(&old, contract);
        if major(contract) > major(&old) {
            report.allowed.extend(found);
        } else {
            report.breaking.extend(found);
        }
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::repo_root;
    use serde_json::json;

    fn mesh() -> Contract {
        Contract::load(&repo_root().join("openapi/service-mesh.yaml")).expect("the mesh contract loads")
    }

    /// The mesh contract with `edit` applied to its document.
    fn edited(edit: impl FnOnce(&mut Value)) -> Contract {
        let mut doc = mesh().doc;
        edit(&mut doc);
        Contract::from_value("service-mesh.yaml", doc).expect("the edited contract parses")
    }

    fn schema<'a>(doc: &'a mut Value, name: &str) -> &'a mut serde_json::Map<String, Value> {
        doc.pointer_mut(&format!("/components/schemas/{name}")).and_then(Value::as_object_mut).expect("a schema")
    }

    fn messages(edit: impl FnOnce(&mut Value)) -> Vec<String> {
        breaking_changes(&mesh(), &edited(edit)).iter().map(ToString::to_string).collect()
    }

    fn assert_caught(found: &[String], expected: &str) {
        assert!(found.iter().any(|m| m.contains(expected)), "expected {expected:?} among {found:#?}");
    }

    #[test]
    fn a_contract_has_no_breaking_change_against_itself() {
        assert_eq!(breaking_changes(&mesh(), &mesh()), Vec::new());
    }

    #[test]
    fn deliberate_breaking_edits_are_caught() {
        let found = messages(|doc| {
            doc["paths"]["/api/v1/services/{service_id}"].as_object_mut().unwrap().remove("get");
        });
        assert_caught(&found, "operation getService was removed");

        let found = messages(|doc| {
            let service = schema(doc, "Service");
            service["properties"].as_object_mut().unwrap().remove("owner");
            let required = service["required"].as_array_mut().unwrap();
            required.retain(|name| name != "owner");
        });
        assert_caught(&found, "response field owner was removed");

        let found = messages(|doc| {
            schema(doc, "Service")["required"].as_array_mut().unwrap().retain(|name| name != "owner");
        });
        assert_caught(&found, "response field owner is no longer always present");

        let found = messages(|doc| schema(doc, "InstanceRegistration")["properties"]["port"]["maximum"] = json!(1024));
        assert_caught(&found, "requests are narrowed: values above maximum 1024 (was 65535) no longer accepted");

        let found =
            messages(|doc| schema(doc, "InstanceRegistration")["properties"]["weight"]["type"] = json!("string"));
        assert_caught(&found, "requests are narrowed: type integer no longer accepted");

        let found = messages(|doc| schema(doc, "Service")["properties"]["revision"]["type"] = json!("number"));
        assert_caught(&found, "responses are widened: type number may now be answered");

        let found = messages(|doc| {
            let registration = schema(doc, "ServiceRegistration");
            registration["properties"]["team"] = json!({"type": "string", "maxLength": 63});
            registration["required"].as_array_mut().unwrap().push(json!("team"));
        });
        assert_caught(&found, "request field team is new and required");

        let found = messages(|doc| {
            schema(doc, "ServiceRegistration")["required"].as_array_mut().unwrap().push(json!("description"));
        });
        assert_caught(&found, "request field description is now required");

        let found = messages(|doc| {
            schema(doc, "InstanceRegistration")["properties"].as_object_mut().unwrap().remove("zone");
        });
        assert_caught(&found, "request field zone was removed (requests that send it are refused)");

        // The scheme enum is read in requests and answered in responses: dropping a value
        // narrows requests, adding one widens responses.
        let found = messages(|doc| schema(doc, "InstanceScheme")["enum"] = json!(["http", "https"]));
        assert_caught(&found, r#"requests are narrowed: the enum value(s) "h2c" no longer accepted"#);
        let found = messages(|doc| schema(doc, "InstanceScheme")["enum"] = json!(["http", "https", "h2c", "h3"]));
        assert_caught(&found, r#"responses are widened: the enum value(s) "h3" may now be answered"#);

        let found = messages(|doc| doc["components"]["parameters"]["Limit"]["schema"]["maximum"] = json!(10));
        assert_caught(&found, "values above maximum 10 (was 500) no longer accepted");

        let found = messages(|doc| doc["components"]["parameters"]["Limit"]["required"] = json!(true));
        assert_caught(&found, "parameter limit is now required");

        let found = messages(|doc| {
            doc["paths"]["/api/v1/services/{service_id}"]["get"]["security"] = json!([{"bearerAuth": ["mesh:write"]}]);
        });
        assert_caught(&found, "getService now needs the scope mesh:write");
    }

    #[test]
    fn additive_edits_are_not_breaking() {
        let found = messages(|doc| {
            // A new optional request field.
            schema(doc, "InstanceRegistration")["properties"]["region"] = json!({"type": "string", "maxLength": 63});
            // New response fields, in a response-only schema and deep inside one.
            schema(doc, "Service")["properties"]["team"] = json!({"type": "string"});
            schema(doc, "Instance")["properties"]["last_seen_by"] = json!({"type": ["string", "null"]});
            // Requests widened: a looser bound, a field no longer required.
            schema(doc, "InstanceRegistration")["properties"]["ttl_seconds"]["maximum"] = json!(7200);
            schema(doc, "InstanceRegistration")["required"].as_array_mut().unwrap().retain(|name| name != "port");
            // A new operation.
            let mut get = doc["paths"]["/api/v1/services/{service_id}"]["get"].clone();
            get["operationId"] = json!("getServiceAgain");
            doc["paths"]["/api/v1/services/{service_id}/again"] = json!({"get": get});
        });
        assert_eq!(found, Vec::<String>::new());
    }

    fn run(dir: &Path, args: &[&str]) {
        let status = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git runs");
        assert!(status.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&status.stderr));
    }

    fn write_mesh(dir: &Path, doc: &Value) {
        let text = serde_yaml::to_string(doc).expect("yaml");
        std::fs::write(dir.join("openapi/service-mesh.yaml"), text).expect("written");
    }

    /// The baseline through git: `HEAD` before a release, the tag after one, and a major
    /// version raise turning breaking changes into allowed ones.
    #[test]
    fn the_baseline_is_the_last_release_tag() {
        let dir =
            std::env::temp_dir().join(format!("pake-compat-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("openapi")).expect("temporary directory");
        run(&dir, &["init", "-q"]);
        for setting in [
            ["user.name", "test"],
            ["user.email", "test@example.invalid"],
            ["commit.gpgsign", "false"],
            ["tag.gpgsign", "false"],
        ] {
            run(&dir, &["config", setting[0], setting[1]]);
        }
        let original = mesh().doc;
        write_mesh(&dir, &original);
        run(&dir, &["add", "openapi"]);
        run(&dir, &["commit", "-q", "-m", "contract"]);

        let mut broken = original.clone();
        broken["paths"]["/api/v1/services/{service_id}"].as_object_mut().unwrap().remove("get");
        let check_with = |doc: &Value, since: Option<&str>| {
            write_mesh(&dir, doc);
            let contract = Contract::load(&dir.join("openapi/service-mesh.yaml")).expect("loads");
            check(&dir, &[contract], since).expect("the check runs").expect("a git work tree")
        };

        // No tag: compared with HEAD, so the uncommitted edit is caught.
        let report = check_with(&broken, None);
        assert!(report.baseline.how.starts_with("HEAD (no release tag yet"), "{}", report.baseline.how);
        assert_eq!(report.breaking.len(), 1, "{:?}", report.breaking);

        // Released and tagged, then the breaking edit committed: still caught, against the tag.
        run(&dir, &["tag", "v1.0.0"]);
        write_mesh(&dir, &broken);
        run(&dir, &["commit", "-q", "-am", "break it"]);
        let report = check_with(&broken, None);
        assert_eq!(report.baseline.revision, "v1.0.0");
        assert_eq!(report.breaking.len(), 1, "{:?}", report.breaking);
        assert!(report.breaking[0].message.contains("getService was removed"));
        // --since names another baseline.
        let report = check_with(&broken, Some("HEAD"));
        assert!(report.breaking.is_empty() && report.baseline.how.contains("--since"));
        assert!(check(&dir, &[], Some("no-such-revision")).is_err());

        // Raising the major version releases the break deliberately.
        let mut major = broken.clone();
        major["info"]["version"] = json!("2.0.0");
        let report = check_with(&major, None);
        assert!(report.breaking.is_empty(), "{:?}", report.breaking);
        assert_eq!(report.allowed.len(), 1, "{:?}", report.allowed);

        let _ = std::fs::remove_dir_all(&dir);
    }
}
