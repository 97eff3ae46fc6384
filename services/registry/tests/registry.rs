//! The registry over real HTTP, driven through the generated client, against a fresh
//! PostgreSQL database and against a fresh SQLite file: every behaviour test runs on both.

mod support;

use conformance::support::{FaultyProxy, eventually};
use pake_mesh_client::types;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

/// Runs an async test body once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
    };
}

on_both_backends!(
    register_heartbeat_discover_expire_and_reap,
    an_instance_is_critical_the_moment_its_ttl_lapses,
    the_shared_snapshot_follows_registrations,
    the_purge_forgets_idempotency_keys_only_past_their_lifetime,
    names_are_unique_and_updates_check_revisions,
    racing_compare_and_set_has_exactly_one_winner,
    blocking_discovery_wakes_on_change,
    lists_page_and_filter_and_bad_cursors_are_refused,
    filters_select_instances_by_status_tag_and_zone,
    dropping_a_registry_stops_its_background_work,
    dependencies_form_a_graph_with_cycles_reported,
    traffic_policies_are_validated_and_versioned,
    configuration_keeps_history_across_deletes,
    nul_characters_are_refused_in_every_string,
    unknown_query_parameters_are_refused_on_every_operation,
    registrations_get_the_defaults_and_health_reports_the_store,
);

fn status_of<E: std::fmt::Debug>(error: pake_mesh_client::Error<E>) -> (u16, E) {
    match error {
        pake_mesh_client::Error::ErrorResponse(response) => (response.status().as_u16(), response.into_inner()),
        other => panic!("expected an error response, got {other:?}"),
    }
}

async fn register_heartbeat_discover_expire_and_reap(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();

    let service = client.register_service().body(registration("arxiv-search")).send().await.unwrap().into_inner();
    // A short TTL that heartbeats keep alive, and a one-second critical period.
    let created = client.register_instance().service_id(service.id).body(instance(9001, 1, 1)).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    let created = created.into_inner();
    assert_eq!(location, format!("/api/v1/services/{}/instances/{}", service.id, created.id));
    assert_eq!(created.status, types::InstanceStatus::Passing);

    let found = client.discover_service().service_name("arxiv-search").send().await.unwrap().into_inner();
    assert_eq!(found.instances.iter().map(|i| i.id).collect::<Vec<_>>(), vec![created.id]);

    // Heartbeats keep it in discovery past its TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let beat: types::HeartbeatRequest =
            serde_json::from_value(json!({"status": "passing", "output": "ok"})).unwrap();
        let after = client
            .heartbeat_instance()
            .service_id(service.id)
            .instance_id(created.id)
            .body(beat)
            .send()
            .await
            .unwrap()
            .into_inner();
        assert!(after.last_heartbeat_at.is_some());
    }
    let found = client.discover_service().service_name("arxiv-search").send().await.unwrap().into_inner();
    assert_eq!(found.instances.len(), 1, "heartbeats keep the instance in discovery");

    // A warning heartbeat leaves it out of passing-only discovery but not out of the rest.
    let warn: types::HeartbeatRequest = serde_json::from_value(json!({"status": "warning"})).unwrap();
    client.heartbeat_instance().service_id(service.id).instance_id(created.id).body(warn).send().await.unwrap();
    let passing = client.discover_service().service_name("arxiv-search").send().await.unwrap().into_inner();
    assert!(passing.instances.is_empty());
    let all =
        client.discover_service().service_name("arxiv-search").passing_only(false).send().await.unwrap().into_inner();
    assert_eq!(all.instances.len(), 1);

    // Stop heartbeating: the instance leaves discovery within 1 s of its TTL lapsing.
    let expires_at = client
        .get_instance()
        .service_id(service.id)
        .instance_id(created.id)
        .send()
        .await
        .unwrap()
        .into_inner()
        .expires_at;
    eventually(Duration::from_secs(5), || async {
        let found = client.discover_service().service_name("arxiv-search").passing_only(false).send().await.unwrap();
        found.into_inner().instances.is_empty()
    })
    .await;
    let lateness = chrono::Utc::now() - expires_at;
    assert!(lateness < chrono::Duration::milliseconds(1000), "left discovery {lateness} after its TTL lapsed");
    let expired = client.get_instance().service_id(service.id).instance_id(created.id).send().await;
    if let Ok(expired) = expired {
        assert_eq!(expired.into_inner().status, types::InstanceStatus::Critical);
    }

    // After its critical period it is deregistered altogether.
    eventually(Duration::from_secs(5), || async {
        let result = client.get_instance().service_id(service.id).instance_id(created.id).send().await;
        matches!(result, Err(pake_mesh_client::Error::ErrorResponse(r)) if r.status().as_u16() == 404)
    })
    .await;

    client.deregister_service().service_id(service.id).send().await.unwrap();
    let (status, _) = status_of(client.get_service().service_id(service.id).send().await.unwrap_err());
    assert_eq!(status, 404);
    let (status, _) = status_of(client.discover_service().service_name("arxiv-search").send().await.unwrap_err());
    assert_eq!(status, 404);
}

/// Readers see an instance's TTL lapse at once, not when the reaper (every 250 ms) next
/// writes it down: from its `expires_at` on, it reads as critical ("ttl expired") and
/// discovery leaves it out.
async fn an_instance_is_critical_the_moment_its_ttl_lapses(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let service = client.register_service().body(registration("lapsing")).send().await.unwrap().into_inner();
    // A one-second TTL, and a long critical period so that it is not deregistered here.
    let created = client
        .register_instance()
        .service_id(service.id)
        .body(instance(9001, 1, 60))
        .send()
        .await
        .unwrap()
        .into_inner();
    // A query waiting on the service wakes when the lapse is written down (by the reaper,
    // within 250 ms), its index moved: the lapse is a change.
    let first = client.discover_service().service_name("lapsing").send().await.unwrap().into_inner();
    let waiting = {
        let client = registry.client();
        let index = first.index as u64;
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let found = client
                .discover_service()
                .service_name("lapsing")
                .passing_only(false)
                .index(index)
                .wait_seconds(30u64)
                .send()
                .await
                .unwrap()
                .into_inner();
            (started.elapsed(), found)
        })
    };
    let wait = (created.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    // Several reads within the reaper's period: each must already see the lapse.
    for _ in 0..4 {
        let read =
            client.get_instance().service_id(service.id).instance_id(created.id).send().await.unwrap().into_inner();
        assert_eq!(read.status, types::InstanceStatus::Critical, "{read:?}");
        assert_eq!(read.status_output.as_deref().map(|o| o.as_str()), Some("ttl expired"), "{read:?}");
        let found =
            client.discover_service().service_name("lapsing").passing_only(false).send().await.unwrap().into_inner();
        assert!(found.instances.is_empty(), "{:?}", found.instances);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (waited, woken) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    assert!(woken.index > first.index, "{woken:?}");
    assert!(woken.instances.is_empty(), "{woken:?}");
}

/// The snapshot cell other services in the process read (the gateway routes from it)
/// is the one the registry publishes to: a registration shows in it, and moves its index.
async fn the_shared_snapshot_follows_registrations(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let cell = registry.registry.snapshot_cell().clone();
    let mut index = cell.watch_index();
    let before = *index.borrow_and_update();
    let service = registry.client().register_service().body(registration("shared")).send().await.unwrap().into_inner();
    assert!(cell.load().service(service.id).is_some(), "the registration is in the shared snapshot");
    assert!(*index.borrow_and_update() > before, "its index moved");
}

/// The periodic purge of idempotency keys, run now and run as if 23 hours had passed,
/// keeps a key written a moment ago: a retry under it still answers the first
/// registration, as the contract promises for 24 hours. Run as if 25 hours had passed, it
/// forgets the key, and the retry is a new (conflicting) registration.
async fn the_purge_forgets_idempotency_keys_only_past_their_lifetime(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let (http, base) = (registry.http(), registry.url());
    let register = || async {
        let response = http
            .post(format!("{base}/api/v1/services/register"))
            .header("idempotency-key", "purge-test-key")
            .json(&json!({"name": "keyed", "version": "1.0.0"}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let (status, first) = register().await;
    assert_eq!(status, 201, "{first}");
    let store = registry.registry.store();
    let now = chrono::Utc::now().timestamp_millis();
    const HOUR_MS: i64 = 3600 * 1000;
    for kept in [now, now + 23 * HOUR_MS] {
        store.purge_idempotency_keys(pake_registry::registry::idempotency_horizon_ms(kept)).await.unwrap();
        let (status, retried) = register().await;
        assert_eq!((status, &retried["id"]), (201, &first["id"]), "{retried}");
    }
    let later = now + 25 * HOUR_MS;
    store.purge_idempotency_keys(pake_registry::registry::idempotency_horizon_ms(later)).await.unwrap();
    let (status, anew) = register().await;
    assert_eq!(status, 409, "the key forgotten, the name taken: {anew}");
}

async fn names_are_unique_and_updates_check_revisions(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let service = client.register_service().body(registration("pubmed")).send().await.unwrap().into_inner();
    let (status, error) = status_of(client.register_service().body(registration("pubmed")).send().await.unwrap_err());
    assert_eq!((status, error.code.as_str()), (409, "conflict"));

    let update: types::ServiceUpdate =
        serde_json::from_value(json!({"version": "1.1.0", "owner": "research"})).unwrap();
    let updated =
        client.update_service().service_id(service.id).if_match("\"1\"").body(update.clone()).send().await.unwrap();
    assert_eq!(updated.headers()["etag"], "\"2\"");
    let updated = updated.into_inner();
    assert_eq!((updated.version.as_str(), updated.revision.get()), ("1.1.0", 2));
    assert_eq!(updated.owner.as_ref().map(|o| o.as_str()), Some("research"));
    assert_eq!(updated.tags.len(), 1, "fields not in the update are kept");

    let (status, error) = status_of(
        client.update_service().service_id(service.id).if_match("\"1\"").body(update).send().await.unwrap_err(),
    );
    assert_eq!((status, error.code.as_str()), (412, "precondition_failed"));
    let fetched = client.get_service().service_id(service.id).send().await.unwrap();
    assert_eq!(fetched.headers()["etag"], "\"2\"");

    // An empty string clears an optional text field.
    let clear: types::ServiceUpdate = serde_json::from_value(json!({"owner": ""})).unwrap();
    let cleared = client.update_service().service_id(service.id).body(clear).send().await.unwrap().into_inner();
    assert_eq!((cleared.owner, cleared.revision.get()), (None, 3));
}

async fn racing_compare_and_set_has_exactly_one_winner(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    client.register_service().body(registration("summariser")).send().await.unwrap();
    let write = |value: &str, expected: i64| -> types::ConfigWrite {
        serde_json::from_value(json!({"value": value, "expected_version": expected})).unwrap()
    };
    let put = |value: String, expected: i64| {
        let client = registry.client();
        let body = write(&value, expected);
        async move {
            client
                .put_config_entry()
                .service_name("summariser")
                .environment("production")
                .key("model")
                .body(body)
                .send()
                .await
        }
    };
    // Round 0 creates (expected version 0); each later round races two writers on the
    // version the previous round left.
    let mut version = 0;
    for round in 0..8 {
        let (a, b) = tokio::join!(put(format!("a{round}"), version), put(format!("b{round}"), version));
        let outcomes = [a, b];
        let winners: Vec<i64> =
            outcomes.iter().filter_map(|r| r.as_ref().ok()).map(|w| w.version.get() as i64).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one writer wins");
        version = winners[0];
        let loser = outcomes.into_iter().find_map(|r| r.err()).expect("one loser");
        let (status, error) = status_of(loser);
        assert_eq!((status, error.code.as_str()), (409, "conflict"), "round {round}");
    }
    let entry = client
        .get_config_entry()
        .service_name("summariser")
        .environment("production")
        .key("model")
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entry.version.get() as i64, version);
    assert_eq!(version, 8, "one write per round landed");
}

async fn blocking_discovery_wakes_on_change(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let service = client.register_service().body(registration("crawler")).send().await.unwrap().into_inner();
    let first = client.discover_service().service_name("crawler").send().await.unwrap();
    let index: u64 = first.headers()["x-pake-index"].to_str().unwrap().parse().unwrap();
    assert_eq!(first.into_inner().index as u64, index);

    // Nothing changes: the query waits its full wait time and returns the same index.
    let started = tokio::time::Instant::now();
    let idle = client.discover_service().service_name("crawler").index(index).wait_seconds(1u64).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}", started.elapsed());
    assert_eq!(idle.into_inner().index as u64, index);

    // A registration while it waits wakes it at once.
    let waiting = {
        let client = registry.client();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let found = client
                .discover_service()
                .service_name("crawler")
                .index(index)
                .wait_seconds(30u64)
                .send()
                .await
                .unwrap();
            (started.elapsed(), found.into_inner())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.register_instance().service_id(service.id).body(instance(9100, 30, 60)).send().await.unwrap();
    let (waited, found) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    assert!(found.index as u64 > index);
    assert_eq!(found.instances.len(), 1);

    // Deregistering the service wakes a query waiting on it too: it is gone (404) at once,
    // not after its wait.
    let index = found.index as u64;
    let waiting = {
        let client = registry.client();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let gone = client.discover_service().service_name("crawler").index(index).wait_seconds(30u64).send().await;
            (started.elapsed(), gone.map(|_| ()).map_err(status_of))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.deregister_service().service_id(service.id).send().await.unwrap();
    let (waited, gone) = waiting.await.unwrap();
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    assert_eq!(gone.unwrap_err().0, 404);
}

async fn lists_page_and_filter_and_bad_cursors_are_refused(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    for name in ["svc-a", "svc-b", "svc-c", "svc-d", "svc-e", "other"] {
        client.register_service().body(registration(name)).send().await.unwrap();
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client.list_services().name_prefix("svc-").limit(2u64);
        if let Some(cursor) = &cursor {
            request = request.cursor(cursor.clone());
        }
        let page = request.send().await.unwrap().into_inner();
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|s| s.name.to_string()));
        match page.next_cursor.0 {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(names, vec!["svc-a", "svc-b", "svc-c", "svc-d", "svc-e"]);

    let tagged = client.list_services().tag("research").send().await.unwrap().into_inner();
    assert_eq!(tagged.items.len(), 6);
    let none = client.list_services().tag("absent").send().await.unwrap().into_inner();
    assert!(none.items.is_empty());

    let (status, error) = status_of(client.list_services().cursor("bm90LWEtbmFtZQ_x").send().await.unwrap_err());
    assert_eq!((status, error.code.as_str()), (400, "invalid_cursor"));

    // Instances and dependencies page the same way: every item once, in order, across pages.
    let service = client.list_services().name_prefix("svc-a").send().await.unwrap().into_inner().items[0].id;
    let mut registered = Vec::new();
    for port in 9201..9206 {
        let created = client.register_instance().service_id(service).body(instance(port, 30, 60)).send().await;
        registered.push(created.unwrap().into_inner().id);
    }
    registered.sort();
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client.list_instances().service_id(service).limit(2u64);
        if let Some(cursor) = &cursor {
            request = request.cursor(cursor.clone());
        }
        let page = request.send().await.unwrap().into_inner();
        assert!(page.items.len() <= 2);
        listed.extend(page.items.iter().map(|i| i.id));
        match page.next_cursor.0 {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(listed, registered, "instances page in id order, each once");

    for target in ["svc-e", "svc-c", "svc-d", "svc-b"] {
        let body: types::DependencyCreate = serde_json::from_value(json!({"depends_on": target})).unwrap();
        client.create_dependency().service_id(service).body(body).send().await.unwrap();
    }
    let mut targets = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client.list_dependencies().service_id(service).limit(3u64);
        if let Some(cursor) = &cursor {
            request = request.cursor(cursor.clone());
        }
        let page = request.send().await.unwrap().into_inner();
        assert!(page.items.len() <= 3);
        targets.extend(page.items.iter().map(|d| d.depends_on.to_string()));
        match page.next_cursor.0 {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(targets, vec!["svc-b", "svc-c", "svc-d", "svc-e"], "dependencies page by name, each once");
}

/// Every filter keeps what it names and only that: instances listed by status, discovery
/// by tag and zone; a page exactly as long as the list has no next cursor; a blocking
/// discovery keeps waiting through another service's change.
async fn filters_select_instances_by_status_tag_and_zone(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let service = client.register_service().body(registration("filtered")).send().await.unwrap().into_inner();
    let mut ids = Vec::new();
    for (port, tags, zone) in [
        (9301, json!(["blue"]), "zone-a"),
        (9302, json!(["green"]), "zone-b"),
        (9303, json!(["blue", "canary"]), "zone-b"),
    ] {
        let body: types::InstanceRegistration = serde_json::from_value(json!({
            "address": "127.0.0.1", "port": port, "ttl_seconds": 60, "tags": tags, "zone": zone
        }))
        .unwrap();
        ids.push(client.register_instance().service_id(service.id).body(body).send().await.unwrap().into_inner().id);
    }
    for (id, status) in [(ids[1], "warning"), (ids[2], "critical")] {
        let beat: types::HeartbeatRequest = serde_json::from_value(json!({"status": status})).unwrap();
        client.heartbeat_instance().service_id(service.id).instance_id(id).body(beat).send().await.unwrap();
    }
    for (status, expected) in [
        (types::InstanceStatus::Passing, ids[0]),
        (types::InstanceStatus::Warning, ids[1]),
        (types::InstanceStatus::Critical, ids[2]),
    ] {
        let listed = client.list_instances().service_id(service.id).status(status).send().await.unwrap().into_inner();
        assert_eq!(listed.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![expected], "status {status:?}");
    }
    // Three instances on a page of three: no next page.
    let all = client.list_instances().service_id(service.id).limit(3u64).send().await.unwrap().into_inner();
    assert_eq!((all.items.len(), all.next_cursor.0.is_none()), (3, true), "{:?}", all.next_cursor);

    let discovered = |tag: Option<&'static str>, zone: Option<&'static str>| {
        let client = registry.client();
        async move {
            let mut request = client.discover_service().service_name("filtered").passing_only(false);
            if let Some(tag) = tag {
                request = request.tag(tag);
            }
            if let Some(zone) = zone {
                request = request.zone(zone);
            }
            let mut found: Vec<_> = request.send().await.unwrap().into_inner().instances.iter().map(|i| i.id).collect();
            found.sort();
            found
        }
    };
    // The critical one is never discovered; tag and zone each keep only their own.
    assert_eq!(discovered(None, None).await, sorted(vec![ids[0], ids[1]]));
    assert_eq!(discovered(Some("blue"), None).await, vec![ids[0]]);
    assert_eq!(discovered(Some("green"), None).await, vec![ids[1]]);
    assert_eq!(discovered(None, Some("zone-b")).await, vec![ids[1]]);
    assert_eq!(discovered(Some("blue"), Some("zone-b")).await, Vec::<uuid::Uuid>::new());

    // Services: a page exactly as long as the list has no next cursor either.
    let services = client.list_services().limit(1u64).send().await.unwrap().into_inner();
    assert_eq!((services.items.len(), services.next_cursor.0.is_none()), (1, true), "{:?}", services.next_cursor);

    // A discovery waiting on this service is not ended by another service's change.
    let index = client.discover_service().service_name("filtered").send().await.unwrap().into_inner().index as u64;
    let waiting = {
        let client = registry.client();
        tokio::spawn(async move {
            client.discover_service().service_name("filtered").index(index).wait_seconds(30u64).send().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.register_service().body(registration("unrelated")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "another service's registration ended the wait");
    let beat: types::HeartbeatRequest = serde_json::from_value(json!({"status": "passing"})).unwrap();
    client.heartbeat_instance().service_id(service.id).instance_id(ids[1]).body(beat).send().await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().into_inner();
    assert!(woken.index as u64 > index);
}

/// A registry dropped (a service shutting down, a test ending) stops its reaper, reload
/// and notification loops: nothing of it goes on reading and writing the store.
async fn dropping_a_registry_stops_its_background_work(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = pake_registry::Registry::start(store).await.expect("registry starts");
    let snapshot = registry.snapshot_cell().clone();
    assert!(std::sync::Arc::strong_count(&snapshot) > 2, "its loops share the snapshot");
    drop(registry);
    eventually(Duration::from_secs(5), || async { std::sync::Arc::strong_count(&snapshot) == 1 }).await;
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

async fn dependencies_form_a_graph_with_cycles_reported(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let mut ids = std::collections::HashMap::new();
    for name in ["gateway", "search", "index"] {
        let service = client.register_service().body(registration(name)).send().await.unwrap().into_inner();
        ids.insert(name, service.id);
    }
    let depend = |from: &'static str, to: &'static str| {
        let client = registry.client();
        let id = ids[from];
        async move {
            let body: types::DependencyCreate = serde_json::from_value(json!({"depends_on": to})).unwrap();
            client.create_dependency().service_id(id).body(body).send().await
        }
    };
    depend("gateway", "search").await.unwrap();
    depend("search", "index").await.unwrap();
    let back = depend("index", "search").await.unwrap().into_inner();
    depend("search", "embeddings").await.unwrap();
    let (status, _) = status_of(depend("gateway", "search").await.unwrap_err());
    assert_eq!(status, 409);
    let (status, _) = status_of(depend("gateway", "gateway").await.unwrap_err());
    assert_eq!(status, 422);

    let graph = client.get_dependency_graph().send().await.unwrap().into_inner();
    let cycles: Vec<Vec<String>> = graph.cycles.iter().map(|c| c.iter().map(|n| n.to_string()).collect()).collect();
    assert_eq!(cycles, vec![vec!["index".to_string(), "search".to_string()]]);
    let unregistered: Vec<String> =
        graph.nodes.iter().filter(|n| !n.registered).map(|n| n.service.to_string()).collect();
    assert_eq!(unregistered, vec!["embeddings"]);
    assert_eq!(graph.edges.len(), 4);

    let from_index = client.get_dependency_graph().root("index").send().await.unwrap().into_inner();
    let mut reachable: Vec<String> = from_index.nodes.iter().map(|n| n.service.to_string()).collect();
    reachable.sort();
    assert_eq!(reachable, vec!["embeddings", "index", "search"]);

    client.delete_dependency().service_id(ids["index"]).dependency_id(back.id).send().await.unwrap();
    let graph = client.get_dependency_graph().send().await.unwrap().into_inner();
    assert!(graph.cycles.is_empty());
}

async fn traffic_policies_are_validated_and_versioned(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let service = client.register_service().body(registration("documents")).send().await.unwrap().into_inner();
    let current = client.get_traffic_policy().service_id(service.id).send().await.unwrap();
    assert_eq!(current.headers()["etag"], "\"1\"");
    assert_eq!(current.into_inner().load_balancing, types::LoadBalancing::RoundRobin);

    let spec = |per_try_timeout_ms: u64| -> Value {
        json!({
            "load_balancing": "least_request", "connect_timeout_ms": 500, "request_timeout_ms": 3000,
            "retries": {"max_attempts": 2, "per_try_timeout_ms": per_try_timeout_ms, "retry_on": ["connect_failure"], "budget_percent": 10},
            "circuit_breaker": {"failure_threshold": 3, "failure_rate_threshold": 0.5, "minimum_requests": 10, "rate_window_seconds": 10, "open_seconds": 5, "half_open_max_requests": 1},
            "outlier_detection": {"consecutive_5xx": 3, "interval_seconds": 5, "base_ejection_seconds": 10, "max_ejection_percent": 50}
        })
    };
    let replaced = client
        .replace_traffic_policy()
        .service_id(service.id)
        .if_match("\"1\"")
        .body(serde_json::from_value::<types::TrafficPolicySpec>(spec(1000)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.headers()["etag"], "\"2\"");
    let discovered = client.discover_service().service_name("documents").send().await.unwrap().into_inner();
    assert_eq!(discovered.traffic_policy.load_balancing, types::LoadBalancing::LeastRequest);

    let stale = client
        .replace_traffic_policy()
        .service_id(service.id)
        .if_match("\"1\"")
        .body(serde_json::from_value::<types::TrafficPolicySpec>(spec(1000)).unwrap())
        .send()
        .await;
    assert_eq!(status_of(stale.unwrap_err()).0, 412);
    // A per-try timeout longer than the whole request is a rule the schema cannot state.
    let invalid = client
        .replace_traffic_policy()
        .service_id(service.id)
        .body(serde_json::from_value::<types::TrafficPolicySpec>(spec(5000)).unwrap())
        .send()
        .await;
    let (status, error) = status_of(invalid.unwrap_err());
    assert_eq!(status, 422);
    assert!(error.message.contains("per_try_timeout_ms"), "{:?}", error.message);
    // A per-try timeout as long as the whole request is allowed.
    let equal = client
        .replace_traffic_policy()
        .service_id(service.id)
        .body(serde_json::from_value::<types::TrafficPolicySpec>(spec(3000)).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(equal.headers()["etag"], "\"3\"");
}

async fn configuration_keeps_history_across_deletes(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let (status, _) = status_of(
        client.get_config_entry().service_name("nobody").environment("dev").key("x").send().await.unwrap_err(),
    );
    assert_eq!(status, 404);
    client.register_service().body(registration("search")).send().await.unwrap();
    let put = |value: &str| {
        let body: types::ConfigWrite = serde_json::from_value(json!({"value": value})).unwrap();
        client.put_config_entry().service_name("search").environment("staging").key("index.shards").body(body).send()
    };
    put("4").await.unwrap();
    let second = put("8").await.unwrap();
    assert_eq!(second.headers()["etag"], "\"2\"");
    client
        .delete_config_entry()
        .service_name("search")
        .environment("staging")
        .key("index.shards")
        .expected_version(2u64)
        .send()
        .await
        .unwrap();
    let recreated = put("16").await.unwrap().into_inner();
    assert_eq!(recreated.version.get(), 4, "versions keep counting after a delete");

    // Conditional writes: a stale version in the body is a conflict (409), in If-Match a
    // failed precondition (412); both given must agree; a version for a key that is not
    // there says so.
    let conditional = |value: &str, expected: Option<u64>, if_match: Option<&str>, key: &str| {
        let mut body = json!({"value": value});
        if let Some(expected) = expected {
            body["expected_version"] = json!(expected);
        }
        let body: types::ConfigWrite = serde_json::from_value(body).unwrap();
        let mut request =
            client.put_config_entry().service_name("search").environment("staging").key(key.to_string()).body(body);
        if let Some(if_match) = if_match {
            request = request.if_match(if_match.to_string());
        }
        request.send()
    };
    let (status, error) = status_of(conditional("32", Some(3), None, "index.shards").await.unwrap_err());
    assert_eq!(status, 409, "{error:?}");
    assert_eq!(error.message.as_str(), "expected version 3 but the current version is 4");
    let (status, error) = status_of(conditional("32", None, Some("\"3\""), "index.shards").await.unwrap_err());
    assert_eq!(status, 412, "{error:?}");
    // Both given and disagreeing: 400, as the contract says.
    let (status, error) = status_of(conditional("32", Some(4), Some("\"3\""), "index.shards").await.unwrap_err());
    assert_eq!((status, error.code.as_str()), (400, "conflicting_preconditions"), "{error:?}");
    assert!(error.message.contains("disagree"), "{error:?}");
    // Both given, agreeing, and stale: the body's check fails as it would alone (409).
    let (status, error) = status_of(conditional("32", Some(3), Some("\"3\""), "index.shards").await.unwrap_err());
    assert_eq!(status, 409, "{error:?}");
    let (status, error) = status_of(conditional("1", Some(2), None, "index.replicas").await.unwrap_err());
    assert_eq!(status, 409, "{error:?}");
    assert_eq!(error.message.as_str(), "expected version 2 but the key does not exist");
    let agreed = conditional("32", Some(4), Some("\"4\""), "index.shards").await.unwrap().into_inner();
    assert_eq!(agreed.version.get(), 5);

    let history = client
        .list_config_history()
        .service_name("search")
        .environment("staging")
        .key("index.shards")
        .send()
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<(u64, String)> =
        history.items.iter().map(|v| (v.version.get(), v.operation.to_string())).collect();
    assert_eq!(
        versions,
        vec![(5, "put".into()), (4, "put".into()), (3, "delete".into()), (2, "put".into()), (1, "put".into())]
    );
    assert!(history.items.iter().all(|v| v.changed_by.as_str() == "tester"));
    // The same history two versions a page: three pages, every version once.
    let (mut paged, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let mut request =
            client.list_config_history().service_name("search").environment("staging").key("index.shards").limit(2u64);
        if let Some(cursor) = cursor.take() {
            request = request.cursor(cursor);
        }
        let page = request.send().await.unwrap().into_inner();
        pages += 1;
        paged.extend(page.items.iter().map(|v| v.version.get()));
        match page.next_cursor.0 {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!((paged, pages), (vec![5, 4, 3, 2, 1], 3));

    let listed = client.list_config_entries().service_name("search").environment("staging").key_prefix("index.").send();
    assert_eq!(listed.await.unwrap().into_inner().items.len(), 1);
    // Entries page by key: two full pages' worth across a cursor, each once.
    for key in ["index.refresh", "index.codec"] {
        let body: types::ConfigWrite = serde_json::from_value(json!({"value": "x"})).unwrap();
        client
            .put_config_entry()
            .service_name("search")
            .environment("staging")
            .key(key)
            .body(body)
            .send()
            .await
            .unwrap();
    }
    let first = client.list_config_entries().service_name("search").environment("staging").limit(2u64).send();
    let first = first.await.unwrap().into_inner();
    let cursor = first.next_cursor.0.as_ref().expect("a second page").to_string();
    let second = client.list_config_entries().service_name("search").environment("staging").limit(2u64).cursor(cursor);
    let second = second.send().await.unwrap().into_inner();
    let keys: Vec<String> = first.items.iter().chain(&second.items).map(|e| e.key.to_string()).collect();
    assert_eq!(keys, vec!["index.codec", "index.refresh", "index.shards"]);
    assert!(second.next_cursor.0.is_none());
    let other_env = client.list_config_entries().service_name("search").environment("production").send();
    assert!(other_env.await.unwrap().into_inner().items.is_empty());
}

/// Two registries on one PostgreSQL database: a change through one reaches the other's
/// snapshot within a second, through LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_see_each_others_changes_within_a_second() {
    let db = TestDatabase::new(Backend::Postgres).await;
    // Two replicas migrating the same fresh database at once.
    let (a, b) = tokio::join!(TestRegistry::start(&db.url), TestRegistry::start(&db.url));
    let (a, b) = (a.client(), b.client());
    let service = a.register_service().body(registration("replicated")).send().await.unwrap().into_inner();
    let took =
        eventually(Duration::from_secs(1), || async { b.get_service().service_id(service.id).send().await.is_ok() })
            .await;
    eprintln!("replica saw the registration after {took:?}");
    let created =
        a.register_instance().service_id(service.id).body(instance(9200, 30, 60)).send().await.unwrap().into_inner();
    eventually(Duration::from_secs(1), || async {
        let found = b.discover_service().service_name("replicated").send().await.unwrap().into_inner();
        found.instances.iter().any(|i| i.id == created.id)
    })
    .await;
    a.deregister_instance().service_id(service.id).instance_id(created.id).send().await.unwrap();
    eventually(Duration::from_secs(1), || async {
        let found = b.discover_service().service_name("replicated").send().await.unwrap().into_inner();
        found.instances.is_empty()
    })
    .await;
}

/// A change whose notification never came (made here behind the registry's back, as a
/// notification lost with a dropped connection would leave it) is still seen: the whole
/// snapshot is reloaded every 30 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_notification_was_lost_is_seen_at_the_next_full_reload() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let service = client.register_service().body(registration("unnotified")).send().await.unwrap().into_inner();
    let pool = registry.registry.store().postgres_pool().expect("a PostgreSQL store").clone();
    sqlx::query("DELETE FROM services WHERE id = $1").bind(service.id).execute(&pool).await.unwrap();
    let took = eventually(Duration::from_secs(35), || async {
        matches!(client.get_service().service_id(service.id).send().await,
                 Err(pake_mesh_client::Error::ErrorResponse(r)) if r.status().as_u16() == 404)
    })
    .await;
    eprintln!("the lost change was seen after {took:?}");
}

/// PostgreSQL goes away: writes answer 503 with Retry-After quickly, reads the snapshot
/// can serve keep working, and everything recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_degrades_writes_and_recovers() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let upstream: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = FaultyProxy::start(upstream).await;
    let registry = TestRegistry::start(&db.url_via(proxy.addr)).await;
    let client = registry.client();
    let service = client.register_service().body(registration("resilient")).send().await.unwrap().into_inner();

    proxy.cut();
    let started = tokio::time::Instant::now();
    let (status, error) = status_of(client.register_service().body(registration("blocked")).send().await.unwrap_err());
    let took = started.elapsed();
    assert_eq!((status, error.code.as_str()), (503, "unavailable"));
    assert!(took < Duration::from_secs(4), "the write failed after {took:?}");
    let raw = registry
        .http()
        .post(format!("{}/api/v1/services/register", registry.url()))
        .json(&json!({"name": "blocked", "version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 503);
    assert_eq!(raw.headers()["retry-after"], "2");

    // Reads served from the snapshot still answer.
    client.get_service().service_id(service.id).send().await.expect("a read during the outage");
    client.discover_service().service_name("resilient").send().await.expect("discovery during the outage");
    let ready = reqwest::get(format!("{}/health/ready", registry.url())).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    proxy.restore();
    eventually(Duration::from_secs(10), || async {
        client.register_service().body(registration("after-outage")).send().await.is_ok()
    })
    .await;
    let ready = reqwest::get(format!("{}/health/ready", registry.url())).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let listed = client.list_services().send().await.unwrap().into_inner();
    let names: Vec<String> = listed.items.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, vec!["after-outage", "resilient"]);
}

/// What a typed client cannot send gets the contract's error body: bad names, bad
/// semantic versions, unknown fields, oversized bodies, bad cursors.
#[tokio::test]
async fn bad_input_gets_a_clear_contract_error() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let registry = TestRegistry::start(&db.url).await;
    let http = registry.http();
    let register = format!("{}/api/v1/services/register", registry.url());
    let cases = [
        (json!({"name": "Bad_Name", "version": "1.0.0"}), 422, "/name"),
        (json!({"name": "good-name", "version": "1.0"}), 422, "/version"),
        (json!({"name": "good-name", "version": "1.0.0", "colour": "blue"}), 422, "/"),
        (json!({"name": "good-name", "version": "1.0.0", "tags": ["a", "a"]}), 422, "/tags"),
        (json!({"version": "1.0.0"}), 422, "/name"),
    ];
    for (body, status, field) in cases {
        let response = http.post(&register).json(&body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "validation_failed", "{body}");
        assert_eq!(error["details"][0]["field"], field, "{body}: {error}");
    }
    let oversized = json!({"name": "big", "version": "1.0.0", "description": "x".repeat(2 * 1024 * 1024)});
    let response = http.post(&register).json(&oversized).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let response = http.get(format!("{}/api/v1/services?cursor=%%%", registry.url())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["details"][0]["field"], "cursor");
    // Nothing was registered by any of it.
    let listed = registry.client().list_services().send().await.unwrap().into_inner();
    assert!(listed.items.is_empty());
}

/// PostgreSQL's text cannot hold U+0000: every write that carries one in any string (body
/// values, member names, parameters) is refused the same way on both backends — 422 naming
/// the JSON pointer for bodies, 400 naming the parameter — and nothing is stored.
async fn nul_characters_are_refused_in_every_string(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let http = registry.http();
    let base = registry.url();
    let service = client.register_service().body(registration("nul-free")).send().await.unwrap().into_inner();
    let instance = client.register_instance().service_id(service.id).body(instance(9001, 30, 60)).send().await.unwrap();
    let instance = instance.into_inner();
    let services = format!("{base}/api/v1/services");
    let id = service.id;
    let cases: Vec<(reqwest::Method, String, Value, &str)> = vec![
        (
            reqwest::Method::POST,
            format!("{services}/register"),
            json!({"name": "nul-test", "version": "1.0.0", "description": "a\u{0}b"}),
            "/description",
        ),
        (
            reqwest::Method::POST,
            format!("{services}/register"),
            json!({"name": "nul-test", "version": "1.0.0", "tags": ["ok", "b\u{0}"]}),
            "/tags/1",
        ),
        (
            reqwest::Method::POST,
            format!("{services}/register"),
            json!({"name": "nul-test", "version": "1.0.0", "metadata": {"team": "x\u{0}"}}),
            "/metadata/team",
        ),
        (
            reqwest::Method::POST,
            format!("{services}/register"),
            json!({"name": "nul-test", "version": "1.0.0", "metadata": {"te\u{0}am": "x"}}),
            "/metadata",
        ),
        (
            reqwest::Method::POST,
            format!("{services}/register"),
            json!({"name": "nul-test", "version": "1.0.0", "owner": "\u{0}"}),
            "/owner",
        ),
        (reqwest::Method::PATCH, format!("{services}/{id}"), json!({"description": "a\u{0}b"}), "/description"),
        (reqwest::Method::PATCH, format!("{services}/{id}"), json!({"owner": "team\u{0}"}), "/owner"),
        (
            reqwest::Method::POST,
            format!("{services}/{id}/instances"),
            json!({"address": "127.0.0.1", "port": 9002, "metadata": {"k": "v\u{0}"}}),
            "/metadata/k",
        ),
        (
            reqwest::Method::POST,
            format!("{services}/{id}/instances/{}/heartbeat", instance.id),
            json!({"status": "passing", "output": "all \u{0} good"}),
            "/output",
        ),
        (
            reqwest::Method::POST,
            format!("{services}/{id}/dependencies"),
            json!({"depends_on": "nul-free", "description": "\u{0}"}),
            "/description",
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/api/v1/config/nul-free/dev/limit"),
            json!({"value": "10\u{0}0"}),
            "/value",
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/api/v1/config/nul-free/dev/limit"),
            json!({"value": "100", "description": "why\u{0}"}),
            "/description",
        ),
    ];
    for (method, url, body, pointer) in cases {
        let response = http.request(method.clone(), &url).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        let error: Value = response.json().await.unwrap();
        assert_eq!(status, 422, "{method} {url} {body}: {error}");
        assert_eq!(error["code"], "validation_failed", "{error}");
        assert_eq!(error["details"][0]["location"], "body", "{error}");
        assert_eq!(error["details"][0]["field"], pointer, "{method} {url} {body}: {error}");
        assert!(error["message"].as_str().unwrap().contains("U+0000"), "{error}");
    }
    // Parameters: in the query and in the path, 400 naming the parameter.
    let parameters = [
        (format!("{services}?name_prefix=nul%00"), "name_prefix", "query"),
        (format!("{base}/api/v1/discovery/nul%00free"), "service_name", "path"),
        (format!("{base}/api/v1/config/nul-free/dev?key_prefix=a%00"), "key_prefix", "query"),
    ];
    for (url, name, location) in parameters {
        let response = http.get(&url).send().await.unwrap();
        let status = response.status().as_u16();
        let error: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{url}: {error}");
        assert_eq!(error["code"], "invalid_parameter", "{error}");
        assert_eq!(error["details"][0]["field"], name, "{url}: {error}");
        assert_eq!(error["details"][0]["location"], location, "{url}: {error}");
        assert!(error["message"].as_str().unwrap().contains("U+0000"), "{error}");
    }
    // Nothing of it was stored, and the registry still works.
    let listed = client.list_services().send().await.unwrap().into_inner();
    assert_eq!(listed.items.len(), 1);
    let kept = &listed.items[0];
    assert_eq!((kept.description.as_deref(), kept.owner.as_deref()), (None, None));
    assert!(kept.metadata.is_empty());
    let config = client.list_config_entries().service_name("nul-free").environment("dev").send().await.unwrap();
    assert!(config.into_inner().items.is_empty());
    let dependencies = client.list_dependencies().service_id(id).send().await.unwrap().into_inner();
    assert!(dependencies.items.is_empty());
    let instances = client.list_instances().service_id(id).send().await.unwrap().into_inner();
    assert_eq!(instances.items.len(), 1);
    assert_eq!(instances.items[0].status_output, None);
}

/// Every operation refuses a query parameter it does not declare with 400 naming it —
/// those that declare none included — and nothing changes.
async fn unknown_query_parameters_are_refused_on_every_operation(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    let client = registry.client();
    let http = registry.http();
    let base = registry.url();
    let service = client.register_service().body(registration("strict")).send().await.unwrap().into_inner();
    let id = service.id;
    let cases: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::POST,
            format!("{base}/api/v1/services/register"),
            Some(json!({"name": "other", "version": "1.0.0"})),
        ),
        (reqwest::Method::GET, format!("{base}/api/v1/services/{id}"), None),
        (reqwest::Method::PATCH, format!("{base}/api/v1/services/{id}"), Some(json!({"description": "changed"}))),
        (reqwest::Method::DELETE, format!("{base}/api/v1/services/{id}"), None),
        (
            reqwest::Method::POST,
            format!("{base}/api/v1/services/{id}/instances"),
            Some(json!({"address": "127.0.0.1", "port": 9001})),
        ),
        (reqwest::Method::GET, format!("{base}/api/v1/services"), None),
        (reqwest::Method::GET, format!("{base}/api/v1/discovery/strict"), None),
        (reqwest::Method::GET, format!("{base}/health/live"), None),
        (reqwest::Method::GET, format!("{base}/metrics"), None),
    ];
    for (method, url, body) in cases {
        let url = format!("{url}?foo=bar");
        let mut request = http.request(method.clone(), &url);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let error: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{method} {url}: {error}");
        assert_eq!(error["code"], "invalid_parameter", "{error}");
        assert_eq!(error["details"][0]["field"], "foo", "{method} {url}: {error}");
        assert_eq!(error["details"][0]["location"], "query", "{error}");
        assert!(error["message"].as_str().unwrap().contains("foo"), "{error}");
    }
    let listed = client.list_services().send().await.unwrap().into_inner();
    let names: Vec<String> = listed.items.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, vec!["strict"]);
    assert_eq!(listed.items[0].description, None);
    assert!(client.list_instances().service_id(id).send().await.unwrap().into_inner().items.is_empty());
}

/// What the registry fills in itself, as JSON on the wire: the defaults of a minimal
/// service and instance registration, the default traffic policy, an emptied description,
/// and the health reports.
async fn registrations_get_the_defaults_and_health_reports_the_store(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;
    // The store reports the last migration on disk as applied (what `pake migrate` prints).
    let folder = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let on_disk = std::fs::read_dir(format!("{}/../../migrations/{folder}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().to_str()?.split('_').next()?.parse::<i64>().ok())
        .max()
        .unwrap();
    assert_eq!(registry.registry.store().schema_version().await.unwrap(), on_disk);
    let http = registry.http();
    let base = registry.url();
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };

    let (status, service) =
        send(http.post(format!("{base}/api/v1/services/register")).json(&json!({"name": "plain", "version": "1.0.0"})))
            .await;
    assert_eq!(status, 201, "{service}");
    let id = service["id"].as_str().unwrap().to_string();
    for (field, expected) in [
        ("description", json!(null)),
        ("owner", json!(null)),
        ("tags", json!([])),
        ("metadata", json!({})),
        ("protocol", json!("http")),
        (
            "health_check",
            json!({"path": "/health", "interval_seconds": 10, "timeout_ms": 2000, "healthy_threshold": 2, "unhealthy_threshold": 3}),
        ),
        ("revision", json!(1)),
    ] {
        assert_eq!(service[field], expected, "{field} in {service}");
    }
    assert_eq!(service["created_at"], service["updated_at"]);

    let (status, mut policy) = send(http.get(format!("{base}/api/v1/services/{id}/traffic-policy"))).await;
    assert_eq!(status, 200, "{policy}");
    assert_eq!(policy["updated_at"], service["created_at"]);
    policy.as_object_mut().unwrap().remove("updated_at");
    assert_eq!(
        policy,
        json!({
            "service_id": id, "service_name": "plain", "load_balancing": "round_robin",
            "connect_timeout_ms": 2000, "request_timeout_ms": 15000,
            "retries": {
                "max_attempts": 2, "per_try_timeout_ms": 5000,
                "retry_on": ["connect_failure", "refused_stream", "reset", "gateway_error"], "budget_percent": 20
            },
            "circuit_breaker": {
                "failure_threshold": 5, "failure_rate_threshold": 0.5, "minimum_requests": 20,
                "rate_window_seconds": 30, "open_seconds": 30, "half_open_max_requests": 3
            },
            "outlier_detection": {
                "consecutive_5xx": 5, "interval_seconds": 10, "base_ejection_seconds": 30, "max_ejection_percent": 50
            },
            "revision": 1
        })
    );

    let (status, instance) = send(
        http.post(format!("{base}/api/v1/services/{id}/instances"))
            .json(&json!({"address": "127.0.0.1", "port": 9000})),
    )
    .await;
    assert_eq!(status, 201, "{instance}");
    for (field, expected) in [
        ("service_id", json!(id)),
        ("service_name", json!("plain")),
        ("scheme", json!("http")),
        ("tags", json!([])),
        ("weight", json!(100)),
        ("zone", json!(null)),
        ("metadata", json!({})),
        ("status", json!("passing")),
        ("status_output", json!(null)),
        ("ttl_seconds", json!(30)),
        ("health_url", json!(null)),
        ("last_heartbeat_at", json!(null)),
        ("deregister_critical_after_seconds", json!(600)),
    ] {
        assert_eq!(instance[field], expected, "{field} in {instance}");
    }
    let registered = chrono::DateTime::parse_from_rfc3339(instance["registered_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(instance["expires_at"].as_str().unwrap()).unwrap();
    assert!((expires - registered - chrono::Duration::seconds(30)).num_milliseconds().abs() < 1000, "{instance}");
    // A heartbeat moves the expiry to a whole TTL from now.
    let instance_id = instance["id"].as_str().unwrap();
    let (status, beaten) = send(
        http.post(format!("{base}/api/v1/services/{id}/instances/{instance_id}/heartbeat"))
            .json(&json!({"status": "passing"})),
    )
    .await;
    assert_eq!(status, 200, "{beaten}");
    let beat_at = chrono::DateTime::parse_from_rfc3339(beaten["last_heartbeat_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(beaten["expires_at"].as_str().unwrap()).unwrap();
    assert!((expires - beat_at - chrono::Duration::seconds(30)).num_milliseconds().abs() < 1000, "{beaten}");

    // An empty description clears it, as an empty owner does.
    let url = format!("{base}/api/v1/services/{id}");
    let (_, described) = send(http.patch(&url).json(&json!({"description": "plain text"}))).await;
    assert_eq!((&described["description"], &described["revision"]), (&json!("plain text"), &json!(2)));
    let (_, cleared) = send(http.patch(&url).json(&json!({"description": ""}))).await;
    assert_eq!((&cleared["description"], &cleared["revision"]), (&json!(null), &json!(3)));

    let (status, live) = send(http.get(format!("{base}/health/live"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        live,
        json!({"status": "pass", "version": env!("CARGO_PKG_VERSION"), "description": "pake service mesh", "checks": {}})
    );
    let (status, mut ready) = send(http.get(format!("{base}/health/ready"))).await;
    assert_eq!(status, 200, "{ready}");
    let check = ready["checks"]["store:connection"][0].as_object_mut().unwrap();
    // The ping's time in milliseconds: a passing ping answered within its 1 s timeout,
    // and no round trip to a store (a socket, or a worker thread) is under a microsecond.
    let observed = check.remove("observed_value").unwrap().as_f64().unwrap();
    assert!((0.001..1000.0).contains(&observed), "{observed} ms");
    assert!(check.remove("time").unwrap().is_string());
    let component = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    assert_eq!(
        ready,
        json!({
            "status": "pass", "version": env!("CARGO_PKG_VERSION"), "description": "pake service mesh",
            "checks": {"store:connection": [
                {"component_id": component, "component_type": "datastore", "status": "pass", "observed_unit": "ms"}
            ]}
        })
    );
}
