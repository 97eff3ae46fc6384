//! Declarative configuration: `pake apply -f FILE` creates or replaces the resources a YAML
//! file declares, and `pake diff -f FILE` shows what that would change (what decK is to
//! Kong). Each YAML document is `kind:` and `spec:` (the contract's create body); a resource
//! is matched by its name (traffic and auto-scaling policies by their service). Nothing is
//! ever deleted: a resource absent from the file is left alone.

use super::commands::{all_alert_rules, all_rate_limit_policies, all_routes, all_slos, read_document, typed};
use super::failure::{Class, Failure};
use super::output::{Format, cell};
use super::{Session, all, call, id_of};
use pake_gateway_client::types as gateway;
use pake_mesh_client::types as mesh;
use pake_monitoring_client::types as monitoring;
use pake_performance_client::types as performance;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Route,
    RateLimitPolicy,
    AlertRule,
    Receiver,
    Slo,
    AutoscalingPolicy,
    TrafficPolicy,
}

impl Kind {
    const ALL: [(&'static str, Kind); 7] = [
        ("Route", Kind::Route),
        ("RateLimitPolicy", Kind::RateLimitPolicy),
        ("AlertRule", Kind::AlertRule),
        ("Receiver", Kind::Receiver),
        ("Slo", Kind::Slo),
        ("AutoscalingPolicy", Kind::AutoscalingPolicy),
        ("TrafficPolicy", Kind::TrafficPolicy),
    ];

    fn name(self) -> &'static str {
        Kind::ALL.iter().find(|(_, kind)| *kind == self).map_or("?", |(name, _)| name)
    }

    /// The spec field that identifies a resource of this kind.
    fn key(self) -> &'static str {
        match self {
            Kind::AutoscalingPolicy | Kind::TrafficPolicy => "service",
            _ => "name",
        }
    }
}

/// One declared resource, its spec checked against the contract's type.
struct Resource {
    kind: Kind,
    name: String,
    spec: Value,
}

enum Plan {
    Create,
    Update { id: Option<uuid::Uuid>, changes: Vec<(String, Value, Value)> },
    Unchanged,
}

/// Reads the documents of `path`. With `only`, documents without `kind` are specs of it.
fn read(path: &Path, only: Option<Kind>) -> Result<Vec<Resource>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Failure::usage(format!("reading {}: {error}", path.display())))?;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|error| Failure::usage(format!("{}: {error}", path.display())))?;
        match value {
            Value::Null => {}
            Value::Array(items) => documents.extend(items),
            other => documents.push(other),
        }
    }
    if documents.is_empty() {
        // A single JSON document (or an empty file) reads the same way.
        let _ = read_document(path)?;
    }
    documents
        .into_iter()
        .enumerate()
        .map(|(n, document)| {
            let at = format!("{} document {}", path.display(), n + 1);
            let (kind, spec) = match (document.get("kind").and_then(Value::as_str), only) {
                (Some(name), _) => {
                    let kind =
                        Kind::ALL.iter().find(|(known, _)| *known == name).map(|(_, kind)| *kind).ok_or_else(|| {
                            let known: Vec<&str> = Kind::ALL.iter().map(|(name, _)| *name).collect();
                            Failure::usage(format!("{at}: unknown kind {name} (known: {})", known.join(", ")))
                        })?;
                    if only.is_some_and(|only| only != kind) {
                        return Err(Failure::usage(format!(
                            "{at}: a {name} where only {} are taken",
                            only.map_or("", Kind::name)
                        )));
                    }
                    (kind, document.get("spec").cloned().unwrap_or(Value::Null))
                }
                (None, Some(kind)) => (kind, document),
                (None, None) => return Err(Failure::usage(format!("{at}: no kind"))),
            };
            let name = spec[kind.key()]
                .as_str()
                .ok_or_else(|| Failure::usage(format!("{at}: spec.{} is required", kind.key())))?
                .to_string();
            Ok(Resource { kind, name, spec })
        })
        .collect()
}

/// The spec as the generated client would send it (defaults filled, fields checked).
fn normalised(kind: Kind, spec: &Value) -> Result<Value, Failure> {
    fn through<T: serde::de::DeserializeOwned + serde::Serialize>(spec: &Value) -> Result<Value, Failure> {
        Ok(serde_json::to_value(typed::<T>(spec.clone())?).unwrap_or_default())
    }
    match kind {
        Kind::Route => through::<gateway::RouteSpec>(spec),
        Kind::RateLimitPolicy => through::<gateway::RateLimitPolicySpec>(spec),
        Kind::AlertRule => {
            // Receivers named but not created yet (a diff before the first apply) stand in
            // as the nil id while the rest of the spec is checked.
            let mut checked = spec.clone();
            if let Some(receivers) = checked.get_mut("receivers").and_then(Value::as_array_mut) {
                for receiver in
                    receivers.iter_mut().filter(|r| r.as_str().is_some_and(|r| r.parse::<uuid::Uuid>().is_err()))
                {
                    *receiver = json!(uuid::Uuid::nil());
                }
            }
            let mut value = through::<monitoring::AlertRuleSpec>(&checked)?;
            value["receivers"] = spec.get("receivers").cloned().unwrap_or(json!([]));
            Ok(value)
        }
        Kind::Receiver => through::<monitoring::ReceiverSpec>(spec),
        Kind::Slo => through::<performance::SloSpec>(spec),
        Kind::AutoscalingPolicy => through::<performance::AutoscalingPolicySpec>(spec),
        Kind::TrafficPolicy => {
            let mut value = through::<mesh::TrafficPolicySpec>(&without_service(spec))?;
            value["service"] = spec["service"].clone();
            Ok(value)
        }
    }
}

/// The fields of a traffic policy a file may set (`TrafficPolicySpec`).
const TRAFFIC_POLICY_FIELDS: [&str; 6] =
    ["load_balancing", "connect_timeout_ms", "request_timeout_ms", "retries", "circuit_breaker", "outlier_detection"];

fn without_service(spec: &Value) -> Value {
    let mut policy = spec.clone();
    if let Some(fields) = policy.as_object_mut() {
        fields.remove("service");
    }
    policy
}

/// `declared` laid over `current`: maps merge field by field, anything else replaces.
fn overlay(current: &Value, declared: &Value) -> Value {
    match (current, declared) {
        (Value::Object(current), Value::Object(declared)) => {
            let mut merged = current.clone();
            for (field, value) in declared {
                let base = current.get(field).unwrap_or(&Value::Null);
                merged.insert(field.clone(), overlay(base, value));
            }
            Value::Object(merged)
        }
        (_, declared) => declared.clone(),
    }
}

/// The resources of each kind that exist, read once per run.
#[derive(Default)]
struct Existing(HashMap<Kind, Vec<Value>>);

impl Existing {
    async fn of(&mut self, session: &Session, kind: Kind) -> Result<&[Value], Failure> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.0.entry(kind) {
            let items = match kind {
                Kind::Route => all_routes(session).await?,
                Kind::RateLimitPolicy => all_rate_limit_policies(session).await?,
                Kind::AlertRule => all_alert_rules(session).await?,
                Kind::Slo => all_slos(session).await?,
                Kind::Receiver => {
                    all(&session.monitoring(), |c, cursor| async move {
                        let mut request = c.list_receivers().limit(500u64);
                        if let Some(cursor) = cursor {
                            request = request.cursor(cursor);
                        }
                        request.send().await
                    })
                    .await?
                }
                Kind::AutoscalingPolicy => {
                    all(&session.performance(), |c, cursor| async move {
                        let mut request = c.list_autoscaling_policies().limit(500u64);
                        if let Some(cursor) = cursor {
                            request = request.cursor(cursor);
                        }
                        request.send().await
                    })
                    .await?
                }
                Kind::TrafficPolicy => Vec::new(),
            };
            slot.insert(items);
        }
        Ok(self.0.get(&kind).map_or(&[], Vec::as_slice))
    }

    fn forget(&mut self, kind: Kind) {
        self.0.remove(&kind);
    }
}

/// Alert rules may name their receivers: names become the receivers' ids.
async fn resolve_receivers(session: &Session, existing: &mut Existing, spec: &mut Value) -> Result<(), Failure> {
    let Some(names) = spec.get("receivers").and_then(Value::as_array).cloned() else { return Ok(()) };
    let receivers = existing.of(session, Kind::Receiver).await?;
    let ids = names
        .into_iter()
        .map(|entry| match entry.as_str() {
            Some(name) if name.parse::<uuid::Uuid>().is_err() => receivers
                .iter()
                .find(|receiver| receiver["name"].as_str() == Some(name))
                .map_or(entry.clone(), |receiver| receiver["id"].clone()),
            _ => entry,
        })
        .collect();
    spec["receivers"] = Value::Array(ids);
    Ok(())
}

async fn plan(session: &Session, existing: &mut Existing, resource: &mut Resource) -> Result<Plan, Failure> {
    let label = format!("{} {}", resource.kind.name(), resource.name);
    plan_checked(session, existing, resource).await.map_err(|mut failure| {
        if failure.class == Class::Usage {
            failure.message = format!("{label}: {}", failure.message);
        }
        failure
    })
}

async fn plan_checked(session: &Session, existing: &mut Existing, resource: &mut Resource) -> Result<Plan, Failure> {
    if resource.kind == Kind::AlertRule {
        resolve_receivers(session, existing, &mut resource.spec).await?;
    }
    let (id, current) = if resource.kind == Kind::TrafficPolicy {
        // A traffic policy always exists (a new service gets the defaults): the file's
        // fields are laid over the current policy, so it may name only what it changes.
        let service = traffic_service(session, &resource.name).await?;
        let policy =
            call(&session.mesh(), |c| async move { c.get_traffic_policy().service_id(service).send().await }).await?;
        let base: serde_json::Map<String, Value> = TRAFFIC_POLICY_FIELDS
            .iter()
            .filter_map(|field| Some((field.to_string(), policy.get(*field)?.clone())))
            .collect();
        resource.spec = overlay(&Value::Object(base), &resource.spec);
        (None, policy)
    } else {
        let key = resource.kind.key();
        match existing.of(session, resource.kind).await?.iter().find(|item| item[key].as_str() == Some(&resource.name))
        {
            None => {
                normalised(resource.kind, &resource.spec)?;
                return Ok(Plan::Create);
            }
            Some(found) => (found["id"].as_str().and_then(|id| id.parse().ok()), found.clone()),
        }
    };
    let mut desired = normalised(resource.kind, &resource.spec)?;
    if resource.kind == Kind::TrafficPolicy {
        desired = without_service(&desired);
    }
    let changes: Vec<(String, Value, Value)> = desired
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(field, wanted)| !same(wanted, current.get(field.as_str()).unwrap_or(&Value::Null)))
        .map(|(field, wanted)| {
            (field.clone(), current.get(field.as_str()).cloned().unwrap_or(Value::Null), wanted.clone())
        })
        .collect();
    Ok(if changes.is_empty() { Plan::Unchanged } else { Plan::Update { id, changes } })
}

async fn traffic_service(session: &Session, service: &str) -> Result<uuid::Uuid, Failure> {
    let page =
        call(&session.mesh(), |c| async move { c.list_services().name_prefix(service).limit(500u64).send().await })
            .await?;
    id_of(page["items"].as_array().map_or(&[], Vec::as_slice), service, "service")
}

/// Equal as JSON, numbers by value (`1` and `1.0` are the same), a missing list or map
/// the same as an empty one.
fn same(wanted: &Value, current: &Value) -> bool {
    match (wanted, current) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b)),
        (Value::Object(a), Value::Object(b)) => {
            a.iter().all(|(k, v)| same(v, b.get(k).unwrap_or(&Value::Null)))
                && b.iter().all(|(k, v)| a.contains_key(k) || v.is_null())
        }
        (Value::Array(a), Value::Null) => a.is_empty(),
        (Value::Object(a), Value::Null) => a.is_empty(),
        (a, b) => a == b,
    }
}

/// Creates the resource, or replaces the one with `id`.
async fn write(session: &Session, resource: &Resource, id: Option<uuid::Uuid>) -> Result<Value, Failure> {
    let spec = &resource.spec;
    macro_rules! send {
        ($api:expr, $type:ty, $create:ident, $replace:ident, $id_param:ident) => {{
            let body: $type = typed(spec.clone())?;
            let body = &body;
            match id {
                None => call(&$api, |c| async move { c.$create().body(body.clone()).send().await }).await,
                Some(id) => {
                    call(&$api, |c| async move { c.$replace().$id_param(id).body(body.clone()).send().await }).await
                }
            }
        }};
    }
    match resource.kind {
        Kind::Route => send!(session.gateway(), gateway::RouteSpec, create_route, update_route, route_id),
        Kind::RateLimitPolicy => send!(
            session.gateway(),
            gateway::RateLimitPolicySpec,
            create_rate_limit_policy,
            update_rate_limit_policy,
            policy_id
        ),
        Kind::AlertRule => {
            send!(session.monitoring(), monitoring::AlertRuleSpec, create_alert_rule, replace_alert_rule, rule_id)
        }
        Kind::Receiver => {
            send!(session.monitoring(), monitoring::ReceiverSpec, create_receiver, replace_receiver, receiver_id)
        }
        Kind::Slo => send!(session.performance(), performance::SloSpec, create_slo, replace_slo, slo_id),
        Kind::AutoscalingPolicy => send!(
            session.performance(),
            performance::AutoscalingPolicySpec,
            create_autoscaling_policy,
            replace_autoscaling_policy,
            policy_id
        ),
        Kind::TrafficPolicy => {
            let service = traffic_service(session, &resource.name).await?;
            let body: mesh::TrafficPolicySpec = typed(without_service(spec))?;
            let body = &body;
            call(&session.mesh(), |c| async move {
                c.replace_traffic_policy().service_id(service).body(body.clone()).send().await
            })
            .await
        }
    }
}

/// `apply -f`: each resource in file order is planned and written before the next, so a
/// rule may name a receiver declared above it.
pub async fn apply(session: &Session, path: &Path, only: Option<Kind>) -> Result<(), Failure> {
    let resources = read(path, only)?;
    let mut existing = Existing::default();
    let mut rows = Vec::new();
    for mut resource in resources {
        let action = match plan(session, &mut existing, &mut resource).await? {
            Plan::Create => {
                write(session, &resource, None).await?;
                existing.forget(resource.kind);
                "created"
            }
            Plan::Update { id, .. } => {
                write(session, &resource, id).await?;
                existing.forget(resource.kind);
                "configured"
            }
            Plan::Unchanged => "unchanged",
        };
        rows.push(json!({"kind": resource.kind.name(), "name": resource.name, "action": action}));
    }
    session.out.list(&Value::Array(rows), &[("KIND", "/kind"), ("NAME", "/name"), ("ACTION", "/action")]);
    Ok(())
}

/// `diff -f`: what `apply -f` would do, field by field; exit code 1 when anything differs.
pub async fn diff(session: &Session, path: &Path) -> Result<(), Failure> {
    let resources = read(path, None)?;
    let mut existing = Existing::default();
    let mut report = Vec::new();
    for mut resource in resources {
        let (action, changes) = match plan(session, &mut existing, &mut resource).await? {
            Plan::Create => ("create", Vec::new()),
            Plan::Update { changes, .. } => ("update", changes),
            Plan::Unchanged => ("unchanged", Vec::new()),
        };
        report.push((resource, action, changes));
    }
    let differing = report.iter().filter(|(_, action, _)| *action != "unchanged").count();
    let out = session.out;
    if out.format == Format::Table {
        if !out.quiet {
            for (resource, action, changes) in &report {
                let mark = match *action {
                    "create" => "+",
                    "update" => "~",
                    _ => continue,
                };
                println!("{mark} {} {}", resource.kind.name(), resource.name);
                for (field, from, to) in changes {
                    println!("    {field}: {} -> {}", cell(Some(from)), cell(Some(to)));
                }
            }
            if differing == 0 {
                println!("no differences");
            }
        }
    } else {
        let rows: Vec<Value> = report
            .iter()
            .map(|(resource, action, changes)| {
                let changes: Vec<Value> =
                    changes.iter().map(|(field, from, to)| json!({"field": field, "from": from, "to": to})).collect();
                json!({"kind": resource.kind.name(), "name": resource.name, "action": action, "changes": changes})
            })
            .collect();
        out.document(&Value::Array(rows));
    }
    if differing > 0 { Err(Failure::new(Class::General, String::new())) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::{overlay, same};
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value_and_absent_lists_are_empty() {
        assert!(same(&json!(1), &json!(1.0)));
        assert!(!same(&json!(1), &json!(2)));
        assert!(same(&json!([]), &json!(null)));
        assert!(same(&json!({"a": 1, "b": null}), &json!({"a": 1.0})));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!same(&json!(["x"]), &json!(["x", "y"])));
    }

    #[test]
    fn a_declared_policy_is_laid_over_the_current_one() {
        let current = json!({"load_balancing": "round_robin", "retries": {"attempts": 2, "budget_percent": 20}});
        let declared = json!({"service": "search", "retries": {"attempts": 3}});
        assert_eq!(
            overlay(&current, &declared),
            json!({"load_balancing": "round_robin", "retries": {"attempts": 3, "budget_percent": 20}, "service": "search"})
        );
    }
}
