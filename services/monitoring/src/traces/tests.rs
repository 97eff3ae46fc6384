use super::*;

/// A fixed "now" for the store's clock: 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000_000_000;
const MS: i64 = 1_000_000;

fn id16(n: u32) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[0] = 0xab;
    id[12..].copy_from_slice(&n.to_be_bytes());
    id
}

fn id8(n: u32) -> [u8; 8] {
    let mut id = [0u8; 8];
    id[0] = 0xcd;
    id[4..].copy_from_slice(&n.to_be_bytes());
    id
}

/// A span of trace `trace` starting `start_ms` after NOW − 1 h and lasting `length_ms`.
fn span(trace: u32, span: u32, parent: Option<u32>, service: &str, start_ms: i64, length_ms: i64) -> SpanRecord {
    let start = NOW - 3600 * 1000 * MS + start_ms * MS;
    SpanRecord {
        trace_id: id16(trace),
        span_id: id8(span),
        parent_span_id: parent.map(id8),
        name: format!("GET /{service}"),
        service: service.to_string(),
        kind: SpanKind::Server,
        start_time: system_time(start),
        end_time: system_time(start + length_ms * MS),
        duration_us: None,
        status: SpanStatus::Ok,
        status_message: None,
        attributes: Vec::new(),
        events: Vec::new(),
    }
}

fn store(limits: TraceLimits) -> TraceStore {
    TraceStore::new(limits)
}

fn ingest(store: &TraceStore, spans: Vec<SpanRecord>) -> Ingested {
    store.store(spans, NOW, Origin::InProcess)
}

fn list(store: &TraceStore, query: TraceQuery) -> TracePage {
    store.list_at(&query, NOW)
}

fn query(limit: usize) -> TraceQuery {
    TraceQuery { limit, ..TraceQuery::default() }
}

fn ids(page: &TracePage) -> Vec<[u8; 16]> {
    page.items.iter().map(|s| s.trace_id).collect()
}

fn counter(family: &Family<Vec<(String, String)>, Counter>, label: &str, value: &str) -> u64 {
    family.get_or_create(&vec![(label.to_string(), value.to_string())]).get()
}

#[test]
fn a_trace_reads_back_whole_ordered_by_start_with_every_field() {
    let store = store(TraceLimits::default());
    let mut child = span(1, 2, Some(1), "search", 10, 100);
    child.kind = SpanKind::Client;
    child.status = SpanStatus::Error;
    child.status_message = Some("upstream timed out".into());
    child.attributes = vec![("http.route".into(), "/v1/search".into()), ("z".into(), String::new())];
    child.events = vec![SpanEventRecord {
        name: "cache.miss".into(),
        time: system_time(unix_nanos(child.start_time) + 3 * MS),
        attributes: vec![("cache.layer".into(), "l2".into())],
    }];
    child.duration_us = Some(100_400);
    let root = span(1, 1, None, "gateway", 0, 120);
    assert_eq!(ingest(&store, vec![child.clone(), root.clone()]).accepted, 2);

    let spans = store.get_at(&id16(1), NOW).expect("the trace is stored");
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0], SpanRecord { duration_us: Some(120_000), ..root });
    assert_eq!(spans[1], child, "a stated duration is kept as given");
    assert_eq!(store.get_at(&id16(2), NOW), None);
}

#[test]
fn summaries_name_the_root_or_else_the_earliest_span() {
    let store = store(TraceLimits::default());
    // Trace 1: its root arrives after a child that started earlier than it.
    let mut failing = span(1, 3, Some(1), "search", 5, 10);
    failing.status = SpanStatus::Error;
    ingest(&store, vec![span(1, 2, Some(1), "arxiv", 2, 50), failing]);
    ingest(&store, vec![span(1, 1, None, "gateway", 3, 200)]);
    // Trace 2: no root at all.
    ingest(&store, vec![span(2, 5, Some(4), "search", 30, 10), span(2, 6, Some(4), "arxiv", 20, 40)]);

    let page = list(&store, query(10));
    assert_eq!(ids(&page), vec![id16(2), id16(1)], "newest start first");
    let second = &page.items[1];
    assert_eq!((second.root_service.as_str(), second.root_name.as_str()), ("gateway", "GET /gateway"));
    assert_eq!(second.span_count, 3);
    assert!(second.error);
    assert_eq!(second.start_time, span(1, 0, None, "x", 2, 0).start_time, "the earliest start");
    assert_eq!(second.duration, Duration::from_millis(201), "earliest start to latest end");
    let first = &page.items[0];
    assert_eq!(first.root_service, "arxiv", "the earliest span while the root is missing");
    assert!(!first.error);
    assert_eq!(page.next, None);
}

#[test]
fn pages_follow_cursors_through_every_trace_once() {
    let store = store(TraceLimits::default());
    // Several traces share a start, so the id breaks ties.
    let spans: Vec<SpanRecord> = (0..57).map(|t| span(t, 1, None, "gateway", i64::from(t / 3), 5)).collect();
    ingest(&store, spans);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = list(&store, TraceQuery { after, ..query(10) });
        assert!(page.items.len() <= 10);
        seen.extend(ids(&page));
        match page.next {
            Some(next) => after = Some(TraceCursor::from_key(&next.to_key()).expect("a cursor reads back")),
            None => break,
        }
    }
    let mut expected: Vec<(i64, [u8; 16])> = (0..57).map(|t| (i64::from(t / 3), id16(t))).collect();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
}

#[test]
fn a_cursor_before_the_window_reads_an_empty_page() {
    let store = store(TraceLimits::default());
    ingest(&store, vec![span(1, 1, None, "gateway", 0, 5)]);
    let after = TraceCursor { start_unix_nanos: 0, trace_id: [0; 16] };
    let since = Some(system_time(NOW - 60 * MS));
    assert_eq!(list(&store, TraceQuery { after: Some(after), since, ..query(5) }).items, Vec::new());
    assert_eq!(TraceCursor::from_key("12:zz"), None);
    assert_eq!(TraceCursor::from_key("nonsense"), None);
}

/// The filters as a plain scan over every trace, to hold the indexes against.
fn brute_force(all: &[(u32, i64, i64, Vec<&str>)], query: &TraceQuery) -> Vec<[u8; 16]> {
    let since = query.since.map_or(i64::MIN, unix_nanos);
    let min = query.min_duration.map_or(0, |d| d.as_nanos() as i64);
    let mut hits: Vec<(i64, [u8; 16])> = all
        .iter()
        .filter(|(_, start, duration, services)| {
            *start >= since && *duration >= min && query.service.as_deref().is_none_or(|s| services.contains(&s))
        })
        .map(|(t, start, _, _)| (*start, id16(*t)))
        .collect();
    hits.sort_by(|a, b| b.cmp(a));
    hits.truncate(query.limit);
    hits.into_iter().map(|(_, id)| id).collect()
}

#[test]
fn filters_by_service_duration_and_start_match_a_plain_scan_on_both_index_paths() {
    let store = store(TraceLimits::default());
    let services = ["gateway", "search", "arxiv", "pubmed"];
    let mut all = Vec::new();
    let mut spans = Vec::new();
    // More traces than the duration index's budget, so a loose duration filter walks
    // the start index and a tight one reads the duration index.
    for t in 0..(DURATION_SCAN_BUDGET as u32 + 2000) {
        let start_ms = i64::from(t) * 7 % 3_000_000;
        let length_ms = i64::from(t.wrapping_mul(2_654_435_761) % 2000);
        let second = services[1 + (t as usize % 3)];
        spans.push(span(t, 1, None, "gateway", start_ms, length_ms));
        spans.push(span(t, 2, Some(1), second, start_ms + 1, length_ms / 2));
        all.push((t, NOW - 3600 * 1000 * MS + start_ms * MS, length_ms * MS, vec!["gateway", second]));
    }
    for chunk in spans.chunks(1000) {
        ingest(&store, chunk.to_vec());
    }
    let since = Some(system_time(NOW - 3600 * 1000 * MS + 1_000_000 * MS));
    for service in [None, Some("search"), Some("pubmed"), Some("unknown")] {
        for min in [None, Some(0), Some(100), Some(1990), Some(5000)] {
            for since in [None, since] {
                let query = TraceQuery {
                    service: service.map(str::to_string),
                    min_duration: min.map(Duration::from_millis),
                    since,
                    after: None,
                    limit: 25,
                };
                assert_eq!(ids(&list(&store, query.clone())), brute_force(&all, &query), "{query:?}");
            }
        }
    }
}

#[test]
fn the_span_limit_evicts_the_oldest_traces_first_and_counts_them() {
    let store = store(TraceLimits { max_spans: 10, ..TraceLimits::default() });
    for t in 0..5 {
        let start = i64::from(t) * 100;
        let spans = vec![
            span(t, 1, None, "gateway", start, 10),
            span(t, 2, Some(1), &format!("service-{t}"), start + 1, 5),
            span(t, 3, Some(1), "search", start + 2, 5),
        ];
        assert_eq!(ingest(&store, spans).accepted, 3);
    }
    // 15 spans went in; the two oldest traces (6 spans) went out to get back to 10.
    assert_eq!(store.stats().spans, 9);
    assert_eq!(ids(&list(&store, query(10))), vec![id16(4), id16(3), id16(2)]);
    assert_eq!(store.get_at(&id16(0), NOW), None);
    assert_eq!(counter(&store.metrics.evicted, "reason", "limit"), 6);
    assert_eq!(store.metrics.spans.get(), 9);
    // The strings of evicted spans are forgotten with them.
    assert_eq!(list(&store, TraceQuery { service: Some("service-0".into()), ..query(5) }).items, Vec::new());
    assert!(store.inner.read().unwrap().strings.lookup("service-0").is_none());
    assert!(store.inner.read().unwrap().strings.lookup("service-4").is_some());
}

#[test]
fn the_byte_limit_evicts_too_and_the_accounting_returns_to_zero() {
    let big = TraceStore::new(TraceLimits::default());
    let mut spans = Vec::new();
    for t in 0..20 {
        let mut s = span(t, 1, None, "gateway", i64::from(t), 5);
        s.attributes = vec![("payload".into(), "x".repeat(1000))];
        spans.push(s);
    }
    ingest(&big, spans.clone());
    let per_trace = big.stats().bytes / 20;
    assert!(per_trace > 1000, "{per_trace} bytes per trace counts the attribute");

    let small = TraceStore::new(TraceLimits { max_bytes: per_trace * 5, ..TraceLimits::default() });
    ingest(&small, spans);
    let stats = small.stats();
    assert!(stats.bytes <= per_trace * 5 && stats.traces >= 3, "{stats:?}");
    assert_eq!(ids(&list(&small, query(1)))[0], id16(19), "the newest stays");

    // Everything past the retention goes, and nothing is left accounted.
    assert_eq!(big.sweep_at(NOW + 48 * 3600 * 1000 * MS), 20);
    let inner = big.inner.read().unwrap();
    assert_eq!((inner.spans, inner.trace_bytes, inner.strings.bytes(), inner.by_id.len()), (0, 0, 0, 0));
    assert!(inner.all.is_empty() && inner.by_service.is_empty());
}

#[test]
fn age_bounds_what_is_stored_read_and_kept() {
    let store = store(TraceLimits { retention: Duration::from_secs(7200), ..TraceLimits::default() });
    // Started 1 h ago: kept. Started 3 h ago: past the 2 h retention, not stored.
    let old = span(2, 1, None, "gateway", -2 * 3600 * 1000, 5);
    let done = ingest(&store, vec![span(1, 1, None, "gateway", 0, 5), old]);
    assert_eq!((done.accepted, done.expired), (1, 1));
    assert_eq!(counter(&store.metrics.refused, "reason", "expired"), 1);
    assert_eq!(store.get_at(&id16(2), NOW), None);

    // Two hours later the first is past the retention: not read, then swept.
    let later = NOW + 3600 * 1000 * MS + MS;
    assert_eq!(store.get_at(&id16(1), later), None);
    assert_eq!(store.list_at(&query(5), later).items, Vec::new());
    assert!(store.get_at(&id16(1), NOW).is_some(), "still stored until swept");
    assert_eq!(store.sweep_at(later), 1);
    assert_eq!(counter(&store.metrics.evicted, "reason", "age"), 1);
    assert_eq!(store.stats(), TraceStats { spans: 0, traces: 0, bytes: 0 });
}

#[test]
fn a_span_sent_again_replaces_its_copy() {
    let store = store(TraceLimits::default());
    ingest(&store, vec![span(1, 1, None, "gateway", 0, 5), span(1, 2, Some(1), "search", 1, 2)]);
    let mut again = span(1, 2, Some(1), "arxiv", 1, 50);
    again.status = SpanStatus::Error;
    assert_eq!(ingest(&store, vec![again.clone()]).accepted, 1);
    let spans = store.get_at(&id16(1), NOW).unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[1].service, "arxiv");
    let summary = &list(&store, query(1)).items[0];
    assert_eq!((summary.span_count, summary.error, summary.duration), (2, true, Duration::from_millis(51)));
    // The index followed the service change.
    assert_eq!(list(&store, TraceQuery { service: Some("search".into()), ..query(5) }).items, Vec::new());
    assert_eq!(list(&store, TraceQuery { service: Some("arxiv".into()), ..query(5) }).items.len(), 1);
    assert!(store.inner.read().unwrap().strings.lookup("search").is_none());
}

#[test]
fn a_trace_holds_at_most_the_contracts_span_count() {
    let store = store(TraceLimits::default());
    let spans: Vec<SpanRecord> = (1..=MAX_SPANS_PER_TRACE as u32 + 3)
        .map(|s| span(1, s, Some(0xffff), "gateway", i64::from(s % 50), 1))
        .collect();
    let done = ingest(&store, spans);
    assert_eq!((done.accepted, done.trace_full), (MAX_SPANS_PER_TRACE, 3));
    assert_eq!(store.get_at(&id16(1), NOW).unwrap().len(), MAX_SPANS_PER_TRACE);
    assert_eq!(counter(&store.metrics.refused, "reason", "trace_full"), 3);
}

#[test]
fn checks_name_the_field_of_what_is_wrong() {
    let now = system_time(NOW);
    let fine = span(1, 1, None, "gateway", 0, 10);
    assert_eq!(fine.check(now), Ok(()));
    let field = |mutate: &dyn Fn(&mut SpanRecord)| {
        let mut s = fine.clone();
        mutate(&mut s);
        s.check(now).err().map(|p| p.field)
    };
    assert_eq!(field(&|s| s.end_time = system_time(unix_nanos(s.start_time) - 1)).as_deref(), Some("/end_time"));
    assert_eq!(field(&|s| s.trace_id = [0; 16]).as_deref(), Some("/trace_id"));
    assert_eq!(field(&|s| s.span_id = [0; 8]).as_deref(), Some("/span_id"));
    assert_eq!(field(&|s| s.parent_span_id = Some([0; 8])).as_deref(), Some("/parent_span_id"));
    assert_eq!(field(&|s| s.service = "Search".into()).as_deref(), Some("/service"));
    assert_eq!(field(&|s| s.name = String::new()).as_deref(), Some("/name"));
    // Within 1 ms of the times' difference (10 ms) is fine; further is not.
    assert_eq!(field(&|s| s.duration_us = Some(10_999)), None);
    assert_eq!(field(&|s| s.duration_us = Some(11_001)).as_deref(), Some("/duration_us"));
    assert_eq!(field(&|s| s.duration_us = Some(8_999)).as_deref(), Some("/duration_us"));
    assert_eq!(field(&|s| s.duration_us = Some(u64::MAX)).as_deref(), Some("/duration_us"));
    let future = |s: &mut SpanRecord| {
        s.start_time = system_time(NOW + 2 * 3600 * 1000 * MS);
        s.end_time = s.start_time;
    };
    assert_eq!(field(&future).as_deref(), Some("/start_time"));
    assert_eq!(
        field(&|s| s.events =
            vec![SpanEventRecord { name: "e".into(), time: now, attributes: vec![("k/~".into(), "v".repeat(4097))] }])
        .as_deref(),
        Some("/events/0/attributes/k~1~0")
    );

    // In process, invalid spans are dropped and counted.
    let store = store(TraceLimits::default());
    let mut bad = span(2, 1, None, "gateway", 0, 10);
    bad.trace_id = [0; 16];
    let mut good = span(3, 1, None, "gateway", 0, 10);
    // `ingest` reads the real clock: place the good span in the present.
    good.start_time = SystemTime::now();
    good.end_time = good.start_time + Duration::from_millis(3);
    let done = store.ingest(vec![bad, good]);
    assert_eq!((done.accepted, done.invalid), (1, 1));
    assert_eq!(counter(&store.metrics.refused, "reason", "invalid"), 1);
    assert_eq!(counter(&store.metrics.ingested, "origin", "in_process"), 1);
}

#[test]
fn a_forwarder_gets_what_the_api_accepts_and_not_what_is_recorded_in_process() {
    struct Collect(std::sync::Mutex<Vec<[u8; 8]>>);
    impl SpanForwarder for Collect {
        fn forward(&self, spans: &[SpanRecord]) {
            self.0.lock().unwrap().extend(spans.iter().map(|s| s.span_id));
        }
    }
    let store = store(TraceLimits::default());
    let collect = Arc::new(Collect(std::sync::Mutex::new(Vec::new())));
    store.set_forwarder(collect.clone());
    let present = |n: u32| {
        let mut s = span(n, n, None, "gateway", 0, 1);
        s.start_time = SystemTime::now();
        s.end_time = s.start_time;
        s
    };
    store.ingest_checked(vec![present(1)]);
    store.ingest(vec![present(2)]);
    assert_eq!(*collect.0.lock().unwrap(), vec![id8(1)]);
    assert_eq!(store.stats().spans, 2);
}

#[test]
fn hex_round_trips_and_refuses_what_is_not_lowercase_hex_of_the_length() {
    let id = [0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6];
    assert_eq!(hex(&id), "4bf92f3577b34da6");
    assert_eq!(parse_hex::<8>("4bf92f3577b34da6"), Some(id));
    assert_eq!(parse_hex::<8>("4BF92F3577B34DA6"), None);
    assert_eq!(parse_hex::<8>("4bf92f3577b34da"), None);
    assert_eq!(parse_hex::<8>("4bf92f3577b34dag"), None);
}

#[test]
fn a_stored_span_is_72_bytes_before_its_extras() {
    assert_eq!(std::mem::size_of::<StoredSpan>(), 72);
}
