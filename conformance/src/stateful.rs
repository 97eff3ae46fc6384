//! Stateful sequences over the resources a contract describes, found from its links and
//! resource paths: a `POST` whose 201 (or 202) links to a `GET` creates a resource; the
//! `PUT`/`PATCH` and `DELETE` on that `GET`'s path update and delete it; the `GET` on
//! the parent path lists it. Each sequence runs
//! create → read → update → read → list contains it → delete → read is 404,
//! creating whatever the create needs first through the API (a service before its
//! instances), and cleans up after itself.
//!
//! A failing sequence is shrunk by dropping the steps the failure does not need and
//! then by simplifying the generated bodies, and is reported as the `curl` commands of
//! the smallest sequence that still fails.

use crate::check::{Violation, check_response};
use crate::contract::{Contract, Link, Operation, ParamLocation};
use crate::coverage::{Place, presence};
use crate::engine::{Attempt, Config, Engine, Input};
use crate::report::{CaseKind, Check, Report};
use crate::request::{Auth, HttpRequest, HttpResponse, Payload};
use crate::schema;
use proptest::strategy::{SBoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value};

/// Pages of a list followed before concluding the resource is not in it.
const MAX_PAGES: usize = 100;

/// A resource the contract lets the engine create, read, update, list and delete.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The operationId that creates it.
    pub create: String,
    /// The operationId its creation links to.
    pub get: String,
    /// The link from the creation to `get`.
    pub link: Link,
    pub update: Option<String>,
    pub list: Option<String>,
    pub delete: Option<String>,
    /// Path parameters of `create` that another resource's creation supplies, with the
    /// index of that resource (a service id for an instance).
    pub parents: Vec<(String, usize)>,
    /// Top-level body properties of its create or update that name another resource, by
    /// the naming convention [`refers_to`] reads: the sequence creates that resource first
    /// and sends its id.
    pub references: Vec<Reference>,
}

/// A body property that holds the id of another resource (or, for an array, ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub property: String,
    /// The index of the resource it names.
    pub resource: usize,
    /// Whether the property is an array of ids.
    pub many: bool,
}

/// The resources of a contract, from its links and paths.
pub fn discover(contract: &Contract) -> Vec<Resource> {
    let mut resources = Vec::new();
    for op in contract.operations.iter().filter(|op| op.method == "POST") {
        let found =
            op.responses.iter().filter(|r| r.status == 201 || r.status == 202).flat_map(|r| r.links.iter()).find_map(
                |link| Some((link, contract.operation(&link.operation_id).filter(|get| get.method == "GET")?)),
            );
        let Some((link, get)) = found else { continue };
        let on_item = |method: &str| {
            contract.operations.iter().find(|o| o.method == method && o.path == get.path).map(|o| o.id.clone())
        };
        let list = collection_path(&get.path)
            .and_then(|path| contract.operations.iter().find(|o| o.method == "GET" && o.path == path))
            .map(|o| o.id.clone());
        resources.push(Resource {
            create: op.id.clone(),
            get: get.id.clone(),
            link: link.clone(),
            update: on_item("PUT").or_else(|| on_item("PATCH")),
            list,
            delete: on_item("DELETE"),
            parents: Vec::new(),
            references: Vec::new(),
        });
    }
    for index in 0..resources.len() {
        let Some(create) = contract.operation(&resources[index].create) else { continue };
        let mut parents = Vec::new();
        for param in create.path_params() {
            // A producer's link names the parameter and takes it from its own answer; a
            // producer that itself needs the parameter cannot supply it.
            let producer = resources.iter().position(|q| {
                q.create != create.id
                    && q.link.parameters.get(&param.name).is_some_and(|e| e.starts_with("$response."))
                    && contract.operation(&q.create).is_some_and(|c| !c.path_params().any(|p| p.name == param.name))
            });
            if let Some(producer) = producer {
                parents.push((param.name.clone(), producer));
            }
        }
        resources[index].parents = parents;
    }
    for index in 0..resources.len() {
        let mut references: Vec<Reference> = Vec::new();
        let writers = [Some(resources[index].create.clone()), resources[index].update.clone()];
        for op in writers.iter().flatten().filter_map(|id| contract.operation(id)) {
            let Some((_, body)) = op.body.as_ref().and_then(|b| b.json()) else { continue };
            let folded = schema::fold(contract, body).unwrap_or(Value::Bool(true));
            for (name, property) in folded.get("properties").and_then(Value::as_object).into_iter().flatten() {
                let property = schema::fold(contract, property).unwrap_or(Value::Bool(true));
                let many = schema::types(&property).contains(&"array");
                let target = (0..resources.len()).find(|r| *r != index && refers_to(contract, &resources[*r], name));
                if let Some(resource) = target
                    && !references.iter().any(|known| &known.property == name)
                {
                    references.push(Reference { property: name.clone(), resource, many });
                }
            }
        }
        resources[index].references = references;
    }
    resources
}

/// Whether a body property named `property` holds the id of `resource`: `<thing>_id` or
/// `<thing>_ids` where `<thing>` is the singular of the resource's collection
/// (`rate_limit_policy_id` for `/rate-limit-policies/{policy_id}`, `slo_id` for
/// `/slos/{slo_id}`), or the collection's own name (`receivers` for `/receivers/{id}`).
pub fn refers_to(contract: &Contract, resource: &Resource, property: &str) -> bool {
    let Some(get) = contract.operation(&resource.get) else { return false };
    let Some(collection) = collection_path(&get.path).and_then(|path| path.rsplit('/').next()) else { return false };
    if collection.starts_with('{') {
        return false;
    }
    let plural = collection.replace('-', "_");
    let singular = match plural.strip_suffix("ies") {
        Some(stem) => format!("{stem}y"),
        None => plural.strip_suffix('s').unwrap_or(&plural).to_string(),
    };
    let stem = property.strip_suffix("_ids").or_else(|| property.strip_suffix("_id"));
    stem == Some(singular.as_str()) || property == plural
}

/// The path parameter that names one of `resource`'s items (`policy_id`).
fn id_parameter(contract: &Contract, resource: &Resource) -> Option<String> {
    let get = contract.operation(&resource.get)?;
    let last = get.path.rsplit('/').next()?;
    let name = last.strip_prefix('{')?.strip_suffix('}')?;
    Some(name.to_string())
}

/// Puts the ids of the resources the sequence created where `references` says the body
/// names them (only properties the body already holds), when the result is still valid.
fn resolve_references(
    references: &[Reference],
    ids: &std::collections::BTreeMap<usize, Value>,
    body: &mut Option<Value>,
    valid: &dyn Fn(&Value) -> bool,
) {
    let Some(Value::Object(map)) = body.as_ref() else { return };
    let mut patched = map.clone();
    let mut changed = false;
    for reference in references {
        let (Some(id), true) = (ids.get(&reference.resource), patched.contains_key(&reference.property)) else {
            continue;
        };
        let value = if reference.many { Value::Array(vec![id.clone()]) } else { id.clone() };
        patched.insert(reference.property.clone(), value);
        changed = true;
    }
    let patched = Value::Object(patched);
    if changed && valid(&patched) {
        *body = Some(patched);
    }
}

/// `/things` for `/things/{id}`.
fn collection_path(path: &str) -> Option<&str> {
    let (parent, last) = path.rsplit_once('/')?;
    (last.starts_with('{') && last.ends_with('}') && !parent.is_empty()).then_some(parent)
}

/// The resources to create before `index`, outermost first.
fn ancestry(resources: &[Resource], index: usize, seen: &mut Vec<usize>) -> Vec<usize> {
    let mut chain = Vec::new();
    let needed =
        resources[index].parents.iter().map(|(_, p)| p).chain(resources[index].references.iter().map(|r| &r.resource));
    for parent in needed {
        if seen.contains(parent) || *parent == index {
            continue;
        }
        seen.push(*parent);
        chain.extend(ancestry(resources, *parent, seen));
        chain.push(*parent);
    }
    chain
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    /// Creates a resource the sequence's resource needs.
    Setup(usize),
    Create,
    Read,
    Update,
    ReadUpdated,
    List,
    Delete,
    ReadDeleted,
}

impl StepKind {
    fn name(self) -> &'static str {
        match self {
            StepKind::Setup(_) => "setup",
            StepKind::Create => "create",
            StepKind::Read => "read",
            StepKind::Update => "update",
            StepKind::ReadUpdated => "read after update",
            StepKind::List => "list",
            StepKind::Delete => "delete",
            StepKind::ReadDeleted => "read after delete",
        }
    }

    /// Steps a failure may not need; removing one removes the steps that depend on it.
    fn removable(self) -> bool {
        !matches!(self, StepKind::Setup(_) | StepKind::Create)
    }

    fn depends_on(self, other: StepKind) -> bool {
        matches!((self, other), (StepKind::ReadUpdated, StepKind::Update) | (StepKind::ReadDeleted, StepKind::Delete))
    }
}

/// One step and the operation it calls; `input` indexes the sequence's generated inputs.
#[derive(Debug, Clone)]
struct Step {
    kind: StepKind,
    operation: String,
    input: usize,
}

fn plan_steps(resources: &[Resource], index: usize) -> Vec<Step> {
    let resource = &resources[index];
    let mut steps = Vec::new();
    let mut add = |kind: StepKind, operation: &str| {
        let input = steps.len();
        steps.push(Step { kind, operation: operation.to_string(), input });
    };
    for parent in ancestry(resources, index, &mut vec![index]) {
        add(StepKind::Setup(parent), &resources[parent].create);
    }
    add(StepKind::Create, &resource.create);
    add(StepKind::Read, &resource.get);
    if let Some(update) = &resource.update {
        add(StepKind::Update, update);
        add(StepKind::ReadUpdated, &resource.get);
    }
    if let Some(list) = &resource.list {
        add(StepKind::List, list);
    }
    if let Some(delete) = &resource.delete {
        add(StepKind::Delete, delete);
        add(StepKind::ReadDeleted, &resource.get);
    }
    steps
}

fn describe(steps: &[Step]) -> String {
    steps.iter().map(|s| format!("{} ({})", s.kind.name(), s.operation)).collect::<Vec<_>>().join(" → ")
}

#[derive(Debug, Clone)]
enum Outcome {
    Passed,
    /// The server's state kept the sequence from going on (a name already taken); not a
    /// failure.
    Skipped(String),
    Failed {
        step: usize,
        violations: Vec<Violation>,
    },
}

#[derive(Debug, Clone)]
struct SequenceRun {
    requests: Vec<HttpRequest>,
    /// The operations called, for coverage.
    executed: Vec<String>,
    /// What creates and updates were sent, by operationId, whose read-back then matched.
    checked: Vec<(String, Value)>,
    outcome: Outcome,
}

impl SequenceRun {
    /// Whether this run fails the way `target` describes (step kind and check).
    fn fails_like(&self, steps: &[Step], target: (StepKind, Check)) -> bool {
        match &self.outcome {
            Outcome::Failed { step, violations } => {
                steps.get(*step).is_some_and(|s| s.kind == target.0) && violations.iter().any(|v| v.check == target.1)
            }
            _ => false,
        }
    }
}

/// Runs the sequences of every resource.
pub(crate) async fn run(engine: &Engine, config: &Config, report: &mut Report) {
    for index in 0..engine.resources.len() {
        let steps = plan_steps(&engine.resources, index);
        let resource = &engine.resources[index];
        let secured = steps.iter().any(|s| engine.contract.operation(&s.operation).is_some_and(Operation::is_secured));
        if secured && engine.target.token.is_none() {
            report.note(format!("{}: no token given, so its sequences did not run", resource.create));
            continue;
        }
        let strategies: Option<Vec<SBoxedStrategy<Input>>> = steps
            .iter()
            .map(|step| {
                let position = engine.contract.operations.iter().position(|op| op.id == step.operation)?;
                Some(engine.plans[position].positive.clone())
            })
            .collect();
        let Some(strategies) = strategies else { continue };
        // First a sequence of complete inputs (every optional property of every step
        // present), so that each property of a create and an update is read back at
        // least once whatever the random sequences draw; then the random ones.
        let complete: Option<Vec<SBoxedStrategy<Input>>> = steps
            .iter()
            .map(|step| {
                let position = engine.contract.operations.iter().position(|op| op.id == step.operation)?;
                engine.plans[position].complete.clone()
            })
            .collect();
        let wanted = config.sequences_per_resource + u32::from(complete.is_some());
        let mut runner = engine.runner(config, &[&resource.create, "stateful"]);
        let (mut executed, mut attempts) = (0, 0);
        while executed < wanted && attempts < wanted.saturating_mul(3) {
            attempts += 1;
            let source = match &complete {
                Some(complete) if executed == 0 && attempts <= 3 => complete,
                _ => &strategies,
            };
            let tree = match source.new_tree(&mut runner) {
                Ok(tree) => tree,
                Err(reason) => {
                    report.note(format!("{}: no sequence could be generated: {reason}", resource.create));
                    break;
                }
            };
            let first = execute(engine, index, &steps, &tree.current(), config).await;
            for operation in &first.executed {
                report.count(operation, CaseKind::Stateful);
            }
            for (operation, body) in &first.checked {
                let Some(position) = engine.contract.operations.iter().position(|op| &op.id == operation) else {
                    continue;
                };
                let held = presence(&engine.tracked(position, config), &Map::new(), Some(body));
                report.observe(operation, &held, true);
            }
            let (step, violations) = match &first.outcome {
                Outcome::Passed => {
                    executed += 1;
                    continue;
                }
                Outcome::Skipped(reason) => {
                    report.note(format!("{}: a sequence stopped early: {reason}", resource.create));
                    continue;
                }
                Outcome::Failed { step, violations } => (*step, violations.clone()),
            };
            executed += 1;
            let operation = steps[step].operation.clone();
            let mut fresh: Vec<Violation> = Vec::new();
            for violation in violations {
                if !fresh.iter().any(|v| v.check == violation.check)
                    && !report.seen(&operation, CaseKind::Stateful, violation.check)
                {
                    fresh.push(violation);
                }
            }
            let Some(target) = fresh.first().map(|v| (steps[step].kind, v.check)) else { continue };
            let (best_steps, best) = Shrinking { engine, index, strategies: &strategies, target, config }
                .shrink(&steps[..=step], tree, &mut runner, first.clone())
                .await;
            for violation in fresh {
                let (source_steps, source) = if best.fails_like(&best_steps, (target.0, violation.check)) {
                    (&best_steps[..], &best)
                } else {
                    (&steps[..=step], &first)
                };
                let violation = match &source.outcome {
                    Outcome::Failed { violations, .. } => {
                        violations.iter().find(|v| v.check == violation.check).cloned().unwrap_or(violation)
                    }
                    _ => violation,
                };
                let attempt = Attempt {
                    requests: source.requests.clone(),
                    violations: Vec::new(),
                    case: format!("sequence {}", describe(source_steps)),
                };
                report.record(engine.failure(&operation, CaseKind::Stateful, violation, &attempt));
            }
        }
        if let Some(complete) = &complete {
            read_back_missing(engine, index, &steps, complete, &mut runner, config, report).await;
        }
    }
}

/// Optional body properties of the resource's create and update that no sequence read
/// back yet: the server refused the complete bodies for a rule across fields (two
/// properties that cannot be given together). For each, a few more sequences of complete
/// inputs whose create and update keep that property and only some of the others: none,
/// then every other one, then the rest.
async fn read_back_missing(
    engine: &Engine,
    index: usize,
    steps: &[Step],
    complete: &Vec<SBoxedStrategy<Input>>,
    runner: &mut TestRunner,
    config: &Config,
    report: &mut Report,
) {
    let resource = &engine.resources[index];
    let writers: Vec<String> = [Some(resource.create.clone()), resource.update.clone()].into_iter().flatten().collect();
    let optional = |operation: &str| -> Vec<String> {
        let Some(position) = engine.contract.operations.iter().position(|op| op.id == operation) else {
            return Vec::new();
        };
        engine
            .tracked(position, config)
            .into_iter()
            .filter_map(|place| match place {
                Place::Body(name) => Some(name),
                Place::Param(_) => None,
            })
            .collect()
    };
    let missing = |report: &Report| -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for writer in &writers {
            let Some(coverage) = report.properties.get(writer) else { continue };
            for (i, label) in coverage.labels.iter().enumerate() {
                if coverage.needs_sequence[i] && !coverage.in_sequence[i] {
                    let name = label.strip_prefix("body ").unwrap_or(label).to_string();
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        names
    };
    for property in missing(report) {
        for pattern in 0..3usize {
            if !missing(report).contains(&property) {
                break;
            }
            let Ok(tree) = complete.new_tree(runner) else { return };
            let mut inputs = tree.current();
            for step in steps.iter().filter(|s| matches!(s.kind, StepKind::Create | StepKind::Update)) {
                let others: Vec<String> = optional(&step.operation).into_iter().filter(|n| *n != property).collect();
                let Some(Value::Object(body)) = inputs.get_mut(step.input).and_then(|i| i.body.as_mut()) else {
                    continue;
                };
                for (i, name) in others.iter().enumerate() {
                    let keep = match pattern {
                        0 => false,
                        1 => i % 2 == 0,
                        _ => i % 2 == 1,
                    };
                    if !keep {
                        body.remove(name);
                    }
                }
            }
            let run = execute(engine, index, steps, &inputs, config).await;
            for operation in &run.executed {
                report.count(operation, CaseKind::Stateful);
            }
            for (operation, body) in &run.checked {
                let Some(position) = engine.contract.operations.iter().position(|op| &op.id == operation) else {
                    continue;
                };
                let held = presence(&engine.tracked(position, config), &Map::new(), Some(body));
                report.observe(operation, &held, true);
            }
            if let Outcome::Failed { step, violations } = &run.outcome {
                let operation = steps[*step].operation.clone();
                let attempt = Attempt {
                    requests: run.requests.clone(),
                    violations: Vec::new(),
                    case: format!("sequence {} keeping {property}", describe(&steps[..=*step])),
                };
                for violation in violations {
                    report.record(engine.failure(&operation, CaseKind::Stateful, violation.clone(), &attempt));
                }
            }
        }
    }
}

type SequenceTree = <Vec<SBoxedStrategy<Input>> as Strategy>::Tree;

/// What shrinking one failing sequence needs.
struct Shrinking<'a> {
    engine: &'a Engine,
    index: usize,
    strategies: &'a Vec<SBoxedStrategy<Input>>,
    /// The kind of step that failed and the check it broke.
    target: (StepKind, Check),
    config: &'a Config,
}

impl Shrinking<'_> {
    /// Drops steps the failure does not need, then simplifies the generated inputs, while
    /// the sequence still fails at the same kind of step with the same check.
    async fn shrink(
        &self,
        steps: &[Step],
        mut tree: SequenceTree,
        runner: &mut TestRunner,
        first: SequenceRun,
    ) -> (Vec<Step>, SequenceRun) {
        let mut budget = self.config.max_shrink_runs;
        let mut current = steps.to_vec();
        let mut best = first;
        for position in (0..current.len().saturating_sub(1)).rev() {
            if budget == 0 {
                break;
            }
            if position >= current.len() - 1 || !current[position].kind.removable() {
                continue;
            }
            let removed = current[position].kind;
            let candidate: Vec<Step> = current
                .iter()
                .enumerate()
                .filter(|(i, s)| *i != position && !(*i > position && s.kind.depends_on(removed)))
                .map(|(_, s)| s.clone())
                .collect();
            if candidate.last().map(|s| s.kind) != Some(self.target.0) {
                continue;
            }
            tree = match self.reproduce(&candidate, tree, runner, &mut budget).await {
                Ok((run, reproducing)) => {
                    current = candidate;
                    best = run;
                    reproducing
                }
                Err(unchanged) => unchanged,
            };
        }
        if tree.simplify() {
            while budget > 0 {
                budget -= 1;
                let run = execute(self.engine, self.index, &current, &tree.current(), self.config).await;
                if run.fails_like(&current, self.target) {
                    best = run;
                    if !tree.simplify() {
                        break;
                    }
                } else if !tree.complicate() {
                    break;
                }
            }
        }
        (current, best)
    }

    /// Runs `steps` with the inputs of `tree` and, when the server's state stops the
    /// sequence early (the failing run left a name behind that is now taken), with fresh
    /// inputs. Returns the run and the inputs that reproduce the failure, or `tree` back.
    async fn reproduce(
        &self,
        steps: &[Step],
        tree: SequenceTree,
        runner: &mut TestRunner,
        budget: &mut u32,
    ) -> Result<(SequenceRun, SequenceTree), SequenceTree> {
        let mut inputs_of: Option<SequenceTree> = None;
        for _ in 0..3 {
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            let inputs = inputs_of.as_ref().unwrap_or(&tree).current();
            let run = execute(self.engine, self.index, steps, &inputs, self.config).await;
            if run.fails_like(steps, self.target) {
                return Ok((run, inputs_of.unwrap_or(tree)));
            }
            if !matches!(run.outcome, Outcome::Skipped(_)) {
                break;
            }
            match self.strategies.new_tree(runner) {
                Ok(fresh) => inputs_of = Some(fresh),
                Err(_) => break,
            }
        }
        Err(tree)
    }
}

/// The value a link's runtime expression stands for.
fn evaluate(
    expression: &str,
    params: &Map<String, Value>,
    request_body: Option<&Value>,
    response: &HttpResponse,
) -> Option<Value> {
    if let Some(rest) = expression.strip_prefix("$response.body") {
        let body = response.json()?;
        return match rest.strip_prefix('#') {
            Some(pointer) => body.pointer(pointer).cloned(),
            None => Some(body),
        };
    }
    if let Some(name) = expression.strip_prefix("$response.header.") {
        return response.header(name).map(|v| Value::String(v.to_string()));
    }
    if let Some(rest) = expression.strip_prefix("$request.body") {
        let body = request_body?;
        return match rest.strip_prefix('#') {
            Some(pointer) => body.pointer(pointer).cloned(),
            None => Some(body.clone()),
        };
    }
    for prefix in ["$request.path.", "$request.query.", "$request.header."] {
        if let Some(name) = expression.strip_prefix(prefix) {
            return params.get(name).cloned();
        }
    }
    (!expression.starts_with('$')).then(|| Value::String(expression.to_string()))
}

/// The schema of an operation's JSON success body.
fn success_schema(op: &Operation) -> Option<&Value> {
    op.responses
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .flat_map(|r| r.content.iter())
        .find(|media| media.is_json())
        .map(|media| &media.schema)
}

/// Fields of `sent` that `got` does not echo, where `got`'s schema has the property.
/// Date and time fields are left out (servers may normalise the offset), arrays whose
/// schema makes them sets compare as sets, and objects compare by the fields sent.
fn echo_mismatches(
    contract: &Contract,
    sent_schema: &Value,
    sent: &Value,
    got_schema: &Value,
    got: &Value,
) -> Vec<String> {
    let fold = |schema: &Value| schema::fold(contract, schema).unwrap_or(Value::Bool(true));
    let (sent_schema, got_schema) = (fold(sent_schema), fold(got_schema));
    let Some(got_properties) = got_schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
    let mut mismatches = Vec::new();
    for (key, value) in sent.as_object().into_iter().flatten() {
        let Some(back) = got.get(key) else { continue };
        if !got_properties.contains_key(key) {
            continue;
        }
        let property = sent_schema.get("properties").and_then(|p| p.get(key)).map(fold).unwrap_or(Value::Bool(true));
        if matches!(property.get("format").and_then(Value::as_str), Some("date-time" | "date" | "time")) {
            continue;
        }
        // A value the read schema cannot hold (a secret read back as `<redacted>`, declared
        // as a `const`) is not expected back.
        let readable = schema::compile(&contract.standalone_schema(&got_properties[key]))
            .map_or(true, |validator| validator.is_valid(value));
        if !readable {
            continue;
        }
        let unordered = property.get("uniqueItems") == Some(&Value::Bool(true));
        if !equivalent(value, back, unordered) {
            mismatches.push(format!("{key} was sent as {value} but reads back as {back}"));
        }
    }
    mismatches
}

fn equivalent(sent: &Value, got: &Value, unordered: bool) -> bool {
    match (sent, got) {
        // An empty string sent to a field that reads back null cleared it (the usual way
        // a PATCH says "no value"); that is not a lost write.
        (Value::String(text), Value::Null) if text.is_empty() => true,
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
            (a - b).abs() <= 1e-9 * a.abs().max(1.0)
        }
        (Value::Array(a), Value::Array(b)) if unordered => {
            let sorted = |items: &[Value]| {
                let mut texts: Vec<String> = items.iter().map(Value::to_string).collect();
                texts.sort();
                texts
            };
            a.len() == b.len() && sorted(a) == sorted(b)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equivalent(x, y, false))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.iter().all(|(key, x)| b.get(key).is_some_and(|y| equivalent(x, y, false)))
        }
        _ => sent == got,
    }
}

/// What a step's answer means for the sequence.
enum Next {
    Continue,
    Stop(Outcome),
}

/// Runs one sequence: the steps in order with the generated inputs, then cleans up.
async fn execute(engine: &Engine, index: usize, steps: &[Step], inputs: &[Input], config: &Config) -> SequenceRun {
    let resources = &engine.resources;
    let resource = &resources[index];
    let mut run =
        SequenceRun { requests: Vec::new(), executed: Vec::new(), checked: Vec::new(), outcome: Outcome::Passed };
    // Path parameter values learnt from what was created (`service_id`, `instance_id`).
    let mut known: Map<String, Value> = Map::new();
    let mut created_parents: Vec<usize> = Vec::new();
    let mut created: Option<Value> = None;
    let mut deleted = false;
    let mut last_sent: Option<(String, Value)> = None;

    // Ids of the resources created so far, by resource index, for the references.
    let mut ids: std::collections::BTreeMap<usize, Value> = std::collections::BTreeMap::new();

    for (position, step) in steps.iter().enumerate() {
        let Some(op) = engine.contract.operation(&step.operation) else { break };
        let mut input = inputs.get(step.input).cloned().unwrap_or(Input { params: Map::new(), body: None });
        let writer = match step.kind {
            StepKind::Setup(parent) => Some(&resources[parent]),
            StepKind::Create | StepKind::Update => Some(resource),
            _ => None,
        };
        let plan = engine.contract.operations.iter().position(|o| o.id == op.id).map(|i| &engine.plans[i]);
        if let (Some(writer), Some(plan)) = (writer, plan) {
            resolve_references(&writer.references, &ids, &mut input.body, &*plan.body_valid);
        }
        let params = params_for(op, &input, &known);
        let fail = |violations: Vec<Violation>| Next::Stop(Outcome::Failed { step: position, violations });
        let next = match call(engine, op, &params, input.body.as_ref(), config, &mut run).await {
            Err(violations) => fail(violations),
            Ok(response) => {
                let status = response.status;
                let success = (200..300).contains(&status);
                // A declared 404/409/412/429, or a status the configuration says the server's
                // state explains for this operation, ends the sequence without a verdict.
                let state = op.declares(status)
                    && (matches!(status, 404 | 409 | 412 | 429)
                        || config.also_accepted.get(&op.id).is_some_and(|statuses| statuses.contains(&status)));
                match step.kind {
                    StepKind::Setup(_) | StepKind::Create => {
                        let (link, which) = match step.kind {
                            StepKind::Setup(parent) => (&resources[parent].link, Some(parent)),
                            _ => (&resource.link, None),
                        };
                        if success {
                            match learn(link, &params, input.body.as_ref(), &response, &mut known) {
                                Err(message) => fail(vec![Violation::new(Check::CreatedIsReadable, message)]),
                                Ok(()) => {
                                    match which {
                                        Some(parent) => {
                                            created_parents.push(parent);
                                            let id = id_parameter(&engine.contract, &resources[parent])
                                                .and_then(|name| known.get(&name).cloned());
                                            if let Some(id) = id {
                                                ids.insert(parent, id);
                                            }
                                        }
                                        None => created = response.json(),
                                    }
                                    let mismatches = echo(engine, op, &input, &response);
                                    last_sent = input.body.clone().map(|body| (op.id.clone(), body));
                                    if mismatches.is_empty() {
                                        Next::Continue
                                    } else {
                                        fail(vec![echo_violation(op, &mismatches)])
                                    }
                                }
                            }
                        } else if state {
                            Next::Stop(Outcome::Skipped(format!("{} answered {status}: {}", op.id, response.excerpt())))
                        } else {
                            fail(vec![Violation::new(
                                Check::PositiveAccepted,
                                format!("a valid {} answered {status}: {}", op.id, response.excerpt()),
                            )])
                        }
                    }
                    StepKind::Read | StepKind::ReadUpdated => {
                        if !success {
                            let after = if step.kind == StepKind::Read { "creating it" } else { "updating it" };
                            fail(vec![Violation::new(
                                Check::CreatedIsReadable,
                                format!("{} after {after} answered {status}: {}", op.id, response.excerpt()),
                            )])
                        } else {
                            let mismatches = match &last_sent {
                                Some((sender, body)) => read_back(engine, sender, body, op, &response),
                                None => Vec::new(),
                            };
                            if mismatches.is_empty() {
                                run.checked.extend(last_sent.clone());
                                Next::Continue
                            } else {
                                fail(vec![echo_violation(op, &mismatches)])
                            }
                        }
                    }
                    StepKind::Update => {
                        if success {
                            let mismatches = echo(engine, op, &input, &response);
                            last_sent = input.body.clone().map(|body| (op.id.clone(), body));
                            if mismatches.is_empty() {
                                Next::Continue
                            } else {
                                fail(vec![echo_violation(op, &mismatches)])
                            }
                        } else if state {
                            Next::Stop(Outcome::Skipped(format!("{} answered {status}: {}", op.id, response.excerpt())))
                        } else {
                            fail(vec![Violation::new(
                                Check::StepAccepted,
                                format!("a valid {} answered {status}: {}", op.id, response.excerpt()),
                            )])
                        }
                    }
                    StepKind::List => {
                        if !success {
                            fail(vec![Violation::new(
                                Check::StepAccepted,
                                format!("{} answered {status}: {}", op.id, response.excerpt()),
                            )])
                        } else {
                            let pages = list_contains(
                                engine,
                                op,
                                &params,
                                response,
                                resource,
                                created.as_ref(),
                                config,
                                &mut run,
                            )
                            .await;
                            match pages {
                                Ok(true) => Next::Continue,
                                Ok(false) => fail(vec![Violation::new(
                                    Check::ListedAfterCreate,
                                    format!("{} does not list what {} created", op.id, resource.create),
                                )]),
                                Err(violations) => fail(violations),
                            }
                        }
                    }
                    StepKind::Delete => {
                        if success {
                            deleted = true;
                            Next::Continue
                        } else if op.declares(status) && matches!(status, 409 | 412 | 429) {
                            Next::Stop(Outcome::Skipped(format!("{} answered {status}: {}", op.id, response.excerpt())))
                        } else {
                            fail(vec![Violation::new(
                                Check::StepAccepted,
                                format!("{} of what was just created answered {status}: {}", op.id, response.excerpt()),
                            )])
                        }
                    }
                    StepKind::ReadDeleted => {
                        if status == 404 {
                            Next::Continue
                        } else {
                            fail(vec![Violation::new(
                                Check::GoneAfterDelete,
                                format!("{} after deleting answered {status} instead of 404", op.id),
                            )])
                        }
                    }
                }
            }
        };
        if let Next::Stop(outcome) = next {
            run.outcome = outcome;
            break;
        }
    }

    // Clean up what the sequence made, newest first. Answers are not checked: this is
    // housekeeping, not part of the case.
    let mut leftovers: Vec<&Resource> = created_parents.iter().map(|p| &resources[*p]).collect();
    if created.is_some() && !deleted {
        leftovers.push(resource);
    }
    for leftover in leftovers.into_iter().rev() {
        let Some(op) = leftover.delete.as_deref().and_then(|id| engine.contract.operation(id)) else { continue };
        let params = params_for(op, &Input { params: Map::new(), body: None }, &known);
        let auth = if op.is_secured() { Auth::Token } else { Auth::Anonymous };
        let request = HttpRequest::build(op, &params, &Payload::None, auth);
        let _ = engine.send(&request, config).await;
    }
    run
}

/// Path parameters from what the sequence learnt (or, failing that, generated), and the
/// required other parameters as generated; optional ones are left out so that a step
/// asks only what the sequence needs (no `If-Match` to fail, no cursor to decode).
fn params_for(op: &Operation, input: &Input, known: &Map<String, Value>) -> Map<String, Value> {
    let mut params = Map::new();
    for param in &op.params {
        let value = match param.location {
            ParamLocation::Path => known.get(&param.name).or_else(|| input.params.get(&param.name)),
            _ if param.required => input.params.get(&param.name),
            _ => None,
        };
        if let Some(value) = value {
            params.insert(param.name.clone(), value.clone());
        }
    }
    params
}

/// Sends one step, records it, and applies the checks every response goes through.
async fn call(
    engine: &Engine,
    op: &Operation,
    params: &Map<String, Value>,
    body: Option<&Value>,
    config: &Config,
    run: &mut SequenceRun,
) -> Result<HttpResponse, Vec<Violation>> {
    let payload = body.cloned().map_or(Payload::None, Payload::Json);
    let auth = if op.is_secured() { Auth::Token } else { Auth::Anonymous };
    let request = HttpRequest::build(op, params, &payload, auth);
    run.requests.push(request.clone());
    run.executed.push(op.id.clone());
    let response = engine.send(&request, config).await.map_err(|violation| vec![violation])?;
    let violations = check_response(op, &engine.validators, &response);
    if violations.is_empty() { Ok(response) } else { Err(violations) }
}

/// Adds the values a link takes from a creation to `known`.
fn learn(
    link: &Link,
    params: &Map<String, Value>,
    body: Option<&Value>,
    response: &HttpResponse,
    known: &mut Map<String, Value>,
) -> Result<(), String> {
    for (name, expression) in &link.parameters {
        let value = evaluate(expression, params, body, response)
            .ok_or_else(|| format!("the link {} cannot be followed: {expression} is not in the answer", link.name))?;
        known.insert(name.clone(), value);
    }
    Ok(())
}

/// Mismatches between what `op` was sent and what it answered.
fn echo(engine: &Engine, op: &Operation, input: &Input, response: &HttpResponse) -> Vec<String> {
    let (Some(sent), Some(got)) = (input.body.as_ref(), response.json()) else { return Vec::new() };
    let Some((_, sent_schema)) = op.body.as_ref().and_then(|b| b.json()) else { return Vec::new() };
    let Some(got_schema) = success_schema(op) else { return Vec::new() };
    echo_mismatches(&engine.contract, sent_schema, sent, got_schema, &got)
}

/// Mismatches between what `sender` was last sent and what `reader` reads back.
fn read_back(engine: &Engine, sender: &str, sent: &Value, reader: &Operation, response: &HttpResponse) -> Vec<String> {
    let Some(sender) = engine.contract.operation(sender) else { return Vec::new() };
    let Some((_, sent_schema)) = sender.body.as_ref().and_then(|b| b.json()) else { return Vec::new() };
    let (Some(got_schema), Some(got)) = (success_schema(reader), response.json()) else { return Vec::new() };
    echo_mismatches(&engine.contract, sent_schema, sent, got_schema, &got)
}

fn echo_violation(op: &Operation, mismatches: &[String]) -> Violation {
    Violation::new(
        Check::FieldsEchoed,
        format!("{} answered with fields other than those sent: {}", op.id, mismatches.join("; ")),
    )
}

/// Whether the list, followed page by page through `next_cursor`, holds the created
/// resource (matched on the field its link reads the id from).
#[allow(clippy::too_many_arguments)]
async fn list_contains(
    engine: &Engine,
    op: &Operation,
    params: &Map<String, Value>,
    first: HttpResponse,
    resource: &Resource,
    created: Option<&Value>,
    config: &Config,
    run: &mut SequenceRun,
) -> Result<bool, Vec<Violation>> {
    let Some(created) = created else { return Ok(true) };
    let get = engine.contract.operation(&resource.get);
    let id_name =
        get.and_then(|get| get.path.rsplit('/').next()).map(|last| last.trim_matches(|c| c == '{' || c == '}'));
    let pointer = id_name
        .and_then(|name| resource.link.parameters.get(name))
        .and_then(|expression| expression.strip_prefix("$response.body#"));
    let Some(pointer) = pointer else { return Ok(true) };
    let Some(id) = created.pointer(pointer) else { return Ok(true) };
    let pages_cursor = op.params.iter().any(|p| p.name == "cursor" && p.location == ParamLocation::Query);
    let mut response = first;
    for _ in 0..MAX_PAGES {
        let Some(body) = response.json() else { return Ok(false) };
        let items = body.as_object().and_then(|o| o.values().find_map(Value::as_array));
        if items.into_iter().flatten().any(|item| item.pointer(pointer) == Some(id)) {
            return Ok(true);
        }
        let Some(cursor) = body.get("next_cursor").and_then(Value::as_str).filter(|_| pages_cursor) else {
            return Ok(false);
        };
        let mut next = params.clone();
        next.insert("cursor".into(), Value::String(cursor.to_string()));
        response = call(engine, op, &next, None, config, run).await?;
        if !(200..300).contains(&response.status) {
            return Err(vec![Violation::new(
                Check::StepAccepted,
                format!("{} with the cursor it gave answered {}", op.id, response.status),
            )]);
        }
    }
    Ok(false)
}
