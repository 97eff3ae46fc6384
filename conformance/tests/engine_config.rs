//! How a run is configured from the environment: the seed, the case counts and whether
//! sequences run (`PAKE_CONFORMANCE_*`), and the target a run goes to (an already-running
//! server or a staging URL, with its tokens), read through a lookup so that the process
//! environment is left alone.

use conformance::engine::DEFAULT_SEED;
use conformance::{Config, Target};
use std::collections::BTreeMap;

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |name| map.get(name).cloned()
}

#[test]
fn the_default_run_is_deterministic_and_stateful() {
    let config = Config::default().with_vars(vars(&[])).expect("no variables is fine");
    assert_eq!(config.seed, DEFAULT_SEED);
    assert_eq!(config.cases_per_operation, 20);
    assert!(config.stateful);
    assert!(config.leave_out.contains("cursor"), "pagination cursors come only from earlier answers");
}

#[test]
fn seed_cases_sequences_and_statefulness_come_from_the_environment() {
    let config = Config::default()
        .with_vars(vars(&[
            ("PAKE_CONFORMANCE_SEED", "0x2A"),
            ("PAKE_CONFORMANCE_CASES", "200"),
            ("PAKE_CONFORMANCE_SEQUENCES", "7"),
            ("PAKE_CONFORMANCE_STATEFUL", "false"),
        ]))
        .expect("valid variables");
    assert_eq!((config.seed, config.cases_per_operation, config.sequences_per_resource), (42, 200, 7));
    assert!(!config.stateful);
    let decimal = Config::default().with_vars(vars(&[("PAKE_CONFORMANCE_SEED", " 1234 ")])).expect("a decimal seed");
    assert_eq!(decimal.seed, 1234);
}

#[test]
fn unusable_variables_are_refused_with_their_name() {
    let error = Config::default().with_vars(vars(&[("PAKE_CONFORMANCE_CASES", "many")])).unwrap_err();
    assert_eq!(error.to_string(), "PAKE_CONFORMANCE_CASES=\"many\": expected a count");
    let error = Config::default().with_vars(vars(&[("PAKE_CONFORMANCE_STATEFUL", "maybe")])).unwrap_err();
    assert_eq!(error.to_string(), "PAKE_CONFORMANCE_STATEFUL=\"maybe\": expected true or false");
}

#[test]
fn the_target_can_be_an_already_running_server_and_its_token_is_never_printed() {
    let local = Target::new("http://127.0.0.1:8000").or_from_vars(vars(&[]));
    assert_eq!(local.base_url, "http://127.0.0.1:8000");
    assert_eq!(local.token, None);

    let staging = Target::new("http://127.0.0.1:8000").or_from_vars(vars(&[
        ("PAKE_CONFORMANCE_BASE_URL", "https://staging.example.com/mesh"),
        ("PAKE_CONFORMANCE_TOKEN", "s3cret-token"),
    ]));
    assert_eq!(staging.base_url, "https://staging.example.com/mesh");
    assert_eq!(staging.token.as_deref(), Some("s3cret-token"));
    let printed = format!("{staging:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
}

#[test]
fn statuses_and_parameters_can_be_allowed_per_operation() {
    let config = Config::default().accept_for_positive("createRoute", 422).leave_out_parameter("discoverService.index");
    assert!(config.also_accepted["createRoute"].contains(&422));
    assert!(config.leave_out.contains("discoverService.index"));
}
