//! What a run found: the failures (each minimal, with the `curl` commands that reproduce
//! it) and, per operation, how many positive, negative, authentication and stateful
//! cases were executed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The property a failure breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// The server answered at all (no connection error, no timeout).
    Reachable,
    /// No 5xx.
    NoServerError,
    /// The status is one the operation declares.
    StatusDeclared,
    /// The content type is one the status declares (and a body is there when one is declared).
    ContentTypeDeclared,
    /// The body is valid against the declared schema.
    BodyMatchesSchema,
    /// A 201 carries `Location`.
    LocationOnCreated,
    /// A 429 or 503 carries `Retry-After`.
    RetryAfterPresent,
    /// Declared response headers are present when required and match their schemas.
    HeadersMatchSchema,
    /// Valid data is accepted (2xx, or a declared status the server's state explains).
    PositiveAccepted,
    /// Invalid data is rejected with a 4xx.
    NegativeRejected,
    /// A rejection carries the contract's error body.
    ErrorBodyOnRejection,
    /// A secured operation answers 401 without a token or with a bad one.
    AuthenticationRequired,
    /// An undeclared method on a known path answers 405 with `Allow`.
    MethodNotAllowed,
    /// A valid step of a stateful sequence (update, delete) is accepted.
    StepAccepted,
    /// What was just created can be read through the link the contract declares.
    CreatedIsReadable,
    /// Fields that were sent are read back unchanged where the response has them.
    FieldsEchoed,
    /// The collection lists what was created.
    ListedAfterCreate,
    /// What was deleted reads as 404.
    GoneAfterDelete,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Reachable => "reachable",
            Check::NoServerError => "no_server_error",
            Check::StatusDeclared => "status_declared",
            Check::ContentTypeDeclared => "content_type_declared",
            Check::BodyMatchesSchema => "body_matches_schema",
            Check::LocationOnCreated => "location_on_created",
            Check::RetryAfterPresent => "retry_after_present",
            Check::HeadersMatchSchema => "headers_match_schema",
            Check::PositiveAccepted => "positive_accepted",
            Check::NegativeRejected => "negative_rejected",
            Check::ErrorBodyOnRejection => "error_body_on_rejection",
            Check::AuthenticationRequired => "authentication_required",
            Check::MethodNotAllowed => "method_not_allowed",
            Check::StepAccepted => "step_accepted",
            Check::CreatedIsReadable => "created_is_readable",
            Check::FieldsEchoed => "fields_echoed",
            Check::ListedAfterCreate => "listed_after_create",
            Check::GoneAfterDelete => "gone_after_delete",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of case that found a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaseKind {
    Positive,
    Negative,
    Auth,
    Method,
    Stateful,
}

impl CaseKind {
    pub fn name(self) -> &'static str {
        match self {
            CaseKind::Positive => "positive",
            CaseKind::Negative => "negative",
            CaseKind::Auth => "auth",
            CaseKind::Method => "method",
            CaseKind::Stateful => "stateful",
        }
    }
}

/// One thing a server got wrong, shrunk to a minimal reproduction.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The operationId, `METHOD /path` for method checks, or `create → … ` for sequences.
    pub operation: String,
    pub kind: CaseKind,
    pub check: Check,
    pub message: String,
    /// What the case was (`body /port: above the maximum 65535`).
    pub case: String,
    /// `curl` commands that reproduce the failure, in order.
    pub reproduction: Vec<String>,
    /// How many cases failed this way (only the first is kept and shrunk).
    pub occurrences: u32,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} ({} case", self.check, self.operation, self.kind.name())?;
        if self.occurrences > 1 {
            write!(f, ", {} times", self.occurrences)?;
        }
        writeln!(f, "): {}", self.message)?;
        if !self.case.is_empty() {
            writeln!(f, "  case: {}", self.case)?;
        }
        writeln!(f, "  reproduce (export PAKE_TOKEN first):")?;
        for command in &self.reproduction {
            writeln!(f, "    {command}")?;
        }
        Ok(())
    }
}

/// Cases executed for one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub positive: u32,
    pub negative: u32,
    pub auth: u32,
    pub stateful: u32,
}

/// Which optional parameters and body properties of one operation positive cases sent
/// present and absent, and (for creates and updates) in a sequence whose read-back was
/// checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyCoverage {
    /// `query limit`, `body tags`, in the contract's order.
    pub labels: Vec<String>,
    pub present: Vec<bool>,
    pub absent: Vec<bool>,
    /// Whether the property must also reach a checked read-back.
    pub needs_sequence: Vec<bool>,
    pub in_sequence: Vec<bool>,
}

impl PropertyCoverage {
    /// Properties exercised and the total.
    pub fn exercised(&self) -> (usize, usize) {
        (self.labels.len() - self.missing().len(), self.labels.len())
    }

    /// What each property not yet exercised still lacks.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for (i, label) in self.labels.iter().enumerate() {
            let mut lacks = Vec::new();
            if !self.present[i] {
                lacks.push("never sent");
            }
            if !self.absent[i] {
                lacks.push("never left out");
            }
            if self.needs_sequence[i] && !self.in_sequence[i] {
                lacks.push("never read back in a sequence");
            }
            if !lacks.is_empty() {
                missing.push(format!("{label} ({})", lacks.join(", ")));
            }
        }
        missing
    }
}

/// The outcome of one run against one contract.
#[derive(Debug, Clone)]
pub struct Report {
    pub contract: String,
    pub base_url: String,
    pub seed: u64,
    pub cases_per_operation: u32,
    /// Per operationId, in contract order.
    pub coverage: Vec<(String, Coverage)>,
    /// Undeclared methods probed on known paths.
    pub method_probes: u32,
    pub failures: Vec<Failure>,
    /// Per operationId, the optional properties exercised.
    pub properties: BTreeMap<String, PropertyCoverage>,
    /// What the run could not do (no token for secured operations, setup refused…).
    pub notes: Vec<String>,
}

impl Report {
    pub(crate) fn new(contract: &str, base_url: &str, seed: u64, cases: u32, operations: &[String]) -> Report {
        Report {
            contract: contract.to_string(),
            base_url: base_url.to_string(),
            seed,
            cases_per_operation: cases,
            coverage: operations.iter().map(|id| (id.clone(), Coverage::default())).collect(),
            method_probes: 0,
            failures: Vec::new(),
            properties: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn track(&mut self, operation_id: &str, labels: Vec<String>, needs_sequence: Vec<bool>) {
        let n = labels.len();
        self.properties.insert(
            operation_id.to_string(),
            PropertyCoverage {
                labels,
                present: vec![false; n],
                absent: vec![false; n],
                needs_sequence,
                in_sequence: vec![false; n],
            },
        );
    }

    /// Records which tracked properties a request held: a positive case's, or a create's
    /// or update's whose read-back was checked (`sequence`).
    pub(crate) fn observe(&mut self, operation_id: &str, held: &[bool], sequence: bool) {
        let Some(coverage) = self.properties.get_mut(operation_id) else { return };
        for (i, held) in held.iter().enumerate().take(coverage.labels.len()) {
            match (sequence, *held) {
                (true, true) => coverage.in_sequence[i] = true,
                (true, false) => {}
                (false, true) => coverage.present[i] = true,
                (false, false) => coverage.absent[i] = true,
            }
        }
    }

    /// Per operation, the properties not yet exercised.
    pub fn missing_property_coverage(&self) -> Vec<(String, Vec<String>)> {
        self.coverage
            .iter()
            .filter_map(|(id, _)| {
                let missing = self.properties.get(id)?.missing();
                (!missing.is_empty()).then(|| (id.clone(), missing))
            })
            .collect()
    }

    /// Panics when an operation has an optional parameter or body property positive
    /// cases did not send both present and absent, or (for creates and updates) that no
    /// sequence read back.
    pub fn require_property_coverage(&self) {
        self.require_property_coverage_except(&[]);
    }

    /// [`Report::require_property_coverage`] but for the operations named, which the caller
    /// says cannot get there (a create the server under test cannot perform yet); their
    /// gaps stay in the coverage table.
    pub fn require_property_coverage_except(&self, excepted: &[&str]) {
        let mut missing = self.missing_property_coverage();
        missing.retain(|(id, _)| !excepted.contains(&id.as_str()));
        if !missing.is_empty() {
            let lines: Vec<String> = missing.iter().map(|(id, what)| format!("  {id}: {}", what.join("; "))).collect();
            panic!(
                "properties of {} not exercised (the run needs 100 %):\n{}\n\n{}",
                self.contract,
                lines.join("\n"),
                self.coverage_table()
            );
        }
    }

    pub fn failures(&self) -> &[Failure] {
        &self.failures
    }

    pub fn coverage_of(&self, operation_id: &str) -> Option<Coverage> {
        self.coverage.iter().find(|(id, _)| id == operation_id).map(|(_, c)| *c)
    }

    pub(crate) fn count(&mut self, operation_id: &str, kind: CaseKind) {
        if let Some((_, coverage)) = self.coverage.iter_mut().find(|(id, _)| id == operation_id) {
            match kind {
                CaseKind::Positive => coverage.positive += 1,
                CaseKind::Negative => coverage.negative += 1,
                CaseKind::Auth => coverage.auth += 1,
                CaseKind::Stateful => coverage.stateful += 1,
                CaseKind::Method => self.method_probes += 1,
            }
        }
    }

    pub(crate) fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// Whether a failure of this operation, kind and check is already recorded; if so it
    /// counts one more occurrence.
    pub(crate) fn seen(&mut self, operation: &str, kind: CaseKind, check: Check) -> bool {
        match self.failures.iter_mut().find(|f| f.operation == operation && f.kind == kind && f.check == check) {
            Some(failure) => {
                failure.occurrences += 1;
                true
            }
            None => false,
        }
    }

    pub(crate) fn record(&mut self, failure: Failure) {
        if !self.seen(&failure.operation, failure.kind, failure.check) {
            self.failures.push(failure);
        }
    }

    /// Operations without a single positive case executed.
    pub fn missing_positive_coverage(&self) -> Vec<&str> {
        self.coverage.iter().filter(|(_, c)| c.positive == 0).map(|(id, _)| id.as_str()).collect()
    }

    /// The failures with their checks, for assertions.
    pub fn failed_checks(&self) -> BTreeSet<Check> {
        self.failures.iter().map(|f| f.check).collect()
    }

    /// operationId × positive / negative / auth / stateful cases executed, and failures.
    pub fn coverage_table(&self) -> String {
        let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
        for failure in &self.failures {
            *failures.entry(failure.operation.as_str()).or_default() += 1;
        }
        let width = self.coverage.iter().map(|(id, _)| id.len()).max().unwrap_or(0).max("operationId".len());
        let mut table = format!(
            "conformance of {} at {} (seed {}, {} cases per operation)\n",
            self.contract, self.base_url, self.seed, self.cases_per_operation
        );
        table.push_str(&format!(
            "{:<width$}  {:>8}  {:>8}  {:>4}  {:>8}  {:>10}  {:>8}\n",
            "operationId", "positive", "negative", "auth", "stateful", "properties", "failures"
        ));
        let (mut all_done, mut all_total) = (0, 0);
        for (id, c) in &self.coverage {
            let (done, total) = self.properties.get(id).map_or((0, 0), PropertyCoverage::exercised);
            (all_done, all_total) = (all_done + done, all_total + total);
            table.push_str(&format!(
                "{:<width$}  {:>8}  {:>8}  {:>4}  {:>8}  {:>10}  {:>8}\n",
                id,
                c.positive,
                c.negative,
                c.auth,
                c.stateful,
                format!("{done}/{total}"),
                failures.get(id.as_str()).copied().unwrap_or(0)
            ));
        }
        let percent = if all_total == 0 { 100.0 } else { 100.0 * all_done as f64 / all_total as f64 };
        table.push_str(&format!(
            "optional properties exercised (sent present and absent; creates and updates read back): {all_done}/{all_total} ({percent:.1} %)\n"
        ));
        for (id, missing) in self.missing_property_coverage() {
            table.push_str(&format!("not exercised: {id}: {}\n", missing.join("; ")));
        }
        let others = self.failures.iter().filter(|f| !self.coverage.iter().any(|(id, _)| *id == f.operation)).count();
        table.push_str(&format!(
            "undeclared methods probed: {}; failures outside single operations: {others}; total failures: {}\n",
            self.method_probes,
            self.failures.len()
        ));
        for note in &self.notes {
            table.push_str(&format!("note: {note}\n"));
        }
        table
    }

    /// Panics with every failure and its reproduction when there is any.
    pub fn assert_ok(&self) {
        if self.failures.is_empty() {
            return;
        }
        let mut message = format!("{} conformance failure(s) in {}:\n\n", self.failures.len(), self.contract);
        for failure in &self.failures {
            message.push_str(&failure.to_string());
            message.push('\n');
        }
        message.push_str(&self.coverage_table());
        panic!("{message}");
    }

    /// Panics when an operation of the contract had no positive case executed.
    pub fn require_positive_coverage(&self) {
        let missing = self.missing_positive_coverage();
        if !missing.is_empty() {
            panic!(
                "operations of {} without a positive case executed: {}\n\n{}",
                self.contract,
                missing.join(", "),
                self.coverage_table()
            );
        }
    }
}
