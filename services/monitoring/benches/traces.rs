//! Trace-store benchmark: ingests a million spans in process (8 services, traces of 2 to
//! 10 spans with HTTP attributes, spread over the last two hours, batches of 1000 as
//! `ingestSpans` takes them), then prints ingest spans/s, bytes per span (the store's own
//! accounting and the process's resident-memory growth), and the time of `getTrace`, of
//! the newest page of `listTraces`, and of "the slowest traces of one service in the last
//! ten minutes" (service + since + min_duration_ms), each as the store answers it and as
//! the contract's JSON.
//!
//! `cargo bench -p pake-monitoring --bench traces` (size: `PAKE_BENCH_SPANS`, default
//! 1,000,000). The numbers are printed, not asserted; the goal (issue 20) is milliseconds
//! for the slowest-traces query with a million spans stored.

use pake_monitoring::traces::{
    SpanEventRecord, SpanKind, SpanRecord, SpanStatus, TraceLimits, TraceQuery, TraceStore, contract,
};
use std::time::{Duration, Instant, SystemTime};

const SERVICES: [&str; 8] = ["gateway", "search", "arxiv", "pubmed", "crawler", "summariser", "registry", "cache"];
const ROUTES: [&str; 6] =
    ["/v1/search", "/v1/papers/{id}", "/v1/summaries", "/v1/crawl", "/v1/authors/{id}", "/v1/citations"];
const BATCH: usize = 1000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// splitmix64: deterministic and good enough to spread ids, services and durations.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Resident memory of this process, from `/proc/self/statm` (pages of 4 KiB).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

/// One trace: a gateway server span and 1 to 9 spans below it in other services.
fn trace(random: &mut Random, start: SystemTime) -> Vec<SpanRecord> {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&random.next().to_be_bytes());
    trace_id[8..].copy_from_slice(&random.next().to_be_bytes());
    // Mostly 5 to 200 ms; one trace in fifty takes up to three seconds more.
    let mut total_ms = 5 + random.below(195);
    if random.below(50) == 0 {
        total_ms += random.below(3000);
    }
    let spans = 2 + random.below(9) as usize;
    let route = ROUTES[random.below(ROUTES.len() as u64) as usize];
    let root_id = random.next().to_be_bytes();
    let failed = random.below(100) == 0;
    let mut out = Vec::with_capacity(spans);
    for i in 0..spans {
        let (service, span_id, parent, offset_ms, length_ms) = if i == 0 {
            ("gateway", root_id, None, 0, total_ms)
        } else {
            let offset = 1 + random.below(total_ms / 2 + 1);
            let length = 1 + random.below(total_ms - offset);
            let service = SERVICES[1 + random.below(SERVICES.len() as u64 - 1) as usize];
            (service, random.next().to_be_bytes(), Some(root_id), offset, length)
        };
        let span_start = start + Duration::from_millis(offset_ms) + Duration::from_micros(random.below(1000));
        let error = failed && i == spans - 1;
        let status = if error { "503" } else { "200" };
        out.push(SpanRecord {
            trace_id,
            span_id,
            parent_span_id: parent,
            name: if i == 0 { format!("GET {route}") } else { format!("{service}.handle") },
            service: service.to_string(),
            kind: if i == 0 { SpanKind::Server } else { SpanKind::Internal },
            start_time: span_start,
            end_time: span_start + Duration::from_millis(length_ms),
            duration_us: None,
            status: if error { SpanStatus::Error } else { SpanStatus::Unset },
            status_message: error.then(|| "upstream answered 503".to_string()),
            attributes: vec![
                ("http.request.method".into(), "GET".into()),
                ("http.route".into(), route.into()),
                ("http.response.status_code".into(), status.into()),
                ("server.address".into(), format!("10.0.{}.{}", random.below(4), random.below(250))),
            ],
            events: if random.below(10) == 0 {
                vec![SpanEventRecord {
                    name: "cache.miss".into(),
                    time: span_start + Duration::from_micros(150),
                    attributes: vec![("cache.layer".into(), "l2".into())],
                }]
            } else {
                Vec::new()
            },
        });
    }
    out
}

/// Median, 99th percentile and mean of `runs` calls of `f`, as text.
fn time<T>(runs: usize, mut f: impl FnMut(usize) -> T) -> String {
    let mut took: Vec<Duration> = (0..runs)
        .map(|i| {
            let started = Instant::now();
            std::hint::black_box(f(i));
            started.elapsed()
        })
        .collect();
    let mean = took.iter().sum::<Duration>() / runs as u32;
    took.sort();
    let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
    format!("p50 {}, p99 {}, mean {} over {runs}", ms(took[runs / 2]), ms(took[runs * 99 / 100]), ms(mean))
}

fn main() {
    let target = env_or("PAKE_BENCH_SPANS", 1_000_000);
    let store = TraceStore::new(TraceLimits { max_spans: target, ..TraceLimits::default() });
    let mut random = Random(0x5041_4b45);
    let now = SystemTime::now();
    let window = Duration::from_secs(2 * 3600);
    // Touched before the baseline, so that resident growth is the store's.
    let mut trace_ids: Vec<[u8; 16]> = vec![[0; 16]; target / 2];
    trace_ids.clear();
    let resident_before = resident_bytes();

    let mut ingesting = Duration::ZERO;
    let mut ingesting_cpu = Duration::ZERO;
    let mut stored = 0;
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(BATCH + 10);
    let mut made = 0;
    while made < target {
        // Traces start evenly over the window, oldest first, the way they arrive.
        let start = now - window + window.mul_f64(made as f64 / target as f64);
        let spans = trace(&mut random, start);
        made += spans.len();
        trace_ids.push(spans[0].trace_id);
        batch.extend(spans);
        if batch.len() >= BATCH || made >= target {
            let spans = std::mem::take(&mut batch);
            let (started, cpu) = (Instant::now(), pake_observe::process_cpu_time());
            stored += store.ingest(spans).accepted;
            ingesting += started.elapsed();
            ingesting_cpu += pake_observe::process_cpu_time().saturating_sub(cpu);
        }
    }
    let resident_after = resident_bytes();
    let stats = store.stats();
    println!("trace store: {} spans in {} traces ingested ({} accepted)", made, trace_ids.len(), stored);
    println!(
        "ingest: {:.0} spans/s in batches of {BATCH} ({:.2} s in the store), {:.0} spans per CPU-second",
        made as f64 / ingesting.as_secs_f64(),
        ingesting.as_secs_f64(),
        made as f64 / ingesting_cpu.as_secs_f64().max(0.01),
    );
    println!(
        "memory: {:.0} bytes/span by the store's accounting ({:.1} MiB), {:.0} bytes/span of resident growth ({:.1} MiB)",
        stats.bytes as f64 / stats.spans as f64,
        stats.bytes as f64 / (1 << 20) as f64,
        resident_after.saturating_sub(resident_before) as f64 / stats.spans as f64,
        resident_after.saturating_sub(resident_before) as f64 / (1 << 20) as f64,
    );

    let runs = 1000;
    let took = time(runs, |i| store.get(&trace_ids[(i * 7919) % trace_ids.len()]));
    println!("getTrace (store): {took}");
    let took = time(runs, |i| {
        let spans = store.get(&trace_ids[(i * 7919) % trace_ids.len()]).unwrap_or_default();
        serde_json::to_vec(&spans.iter().map(contract::span_view).collect::<Vec<_>>()).map(|v| v.len())
    });
    println!("getTrace (store + JSON): {took}");

    let newest = TraceQuery { limit: 50, ..TraceQuery::default() };
    let took = time(runs, |_| store.list(&newest));
    println!("listTraces newest page of 50: {took}");

    let since = Some(SystemTime::now() - Duration::from_secs(600));
    let query = |service: &str, min_ms: u64| TraceQuery {
        service: Some(service.to_string()),
        min_duration: Some(Duration::from_millis(min_ms)),
        since,
        after: None,
        limit: 50,
    };
    for (service, min_ms) in [("search", 1000), ("search", 100), ("summariser", 2500), ("search", 0)] {
        let q = query(service, min_ms);
        let found = store.list(&q).items.len();
        let took = time(runs, |_| {
            let page = store.list(&q);
            serde_json::to_vec(&page.items.iter().map(contract::summary_view).collect::<Vec<_>>()).map(|v| v.len())
        });
        println!(
            "listTraces service={service} since=10 min ago min_duration_ms={min_ms} (+ JSON): {found} on the page, {took}"
        );
    }
}
