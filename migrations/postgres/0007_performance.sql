-- The performance service: request samples kept as latency sketches per service, route,
-- status class and time bucket (10 s, 5 min and 1 h tiers, each with its own retention),
-- SLO definitions, auto-scaling policies with their recent recommendations, benchmarks.

-- Services that have ever sent a sample (statistics answer 404 for the others).
CREATE TABLE perf_services (
    service TEXT PRIMARY KEY,
    first_sample_ms BIGINT NOT NULL
);

CREATE TABLE perf_sketches (
    service TEXT NOT NULL,
    resolution_s BIGINT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    route TEXT NOT NULL,
    status_class BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    -- A DDSketch of the latencies in ms, in the DataDog Java binary encoding.
    sketch BYTEA NOT NULL,
    CONSTRAINT perf_sketches_pkey PRIMARY KEY (service, resolution_s, bucket_ms, route, status_class)
);
CREATE INDEX perf_sketches_expiry ON perf_sketches (resolution_s, bucket_ms);

CREATE TABLE perf_slos (
    id UUID PRIMARY KEY,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    objective TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    doc JSONB NOT NULL,
    CONSTRAINT perf_slos_name_key UNIQUE (service, name)
);
CREATE INDEX perf_slos_order ON perf_slos (created_ms, id);

CREATE TABLE perf_autoscaling_policies (
    id UUID PRIMARY KEY,
    service TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    doc JSONB NOT NULL,
    CONSTRAINT perf_autoscaling_policies_service_key UNIQUE (service)
);
CREATE INDEX perf_autoscaling_policies_order ON perf_autoscaling_policies (created_ms, id);

-- Unstabilised recommendations of the last hour, for the stabilisation windows.
CREATE TABLE perf_scaling_recommendations (
    policy_id UUID NOT NULL REFERENCES perf_autoscaling_policies (id) ON DELETE CASCADE,
    at_ms BIGINT NOT NULL,
    replicas INTEGER NOT NULL
);
CREATE INDEX perf_scaling_recommendations_policy ON perf_scaling_recommendations (policy_id, at_ms);

CREATE TABLE perf_benchmarks (
    id UUID PRIMARY KEY,
    service TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    doc JSONB NOT NULL
);
CREATE INDEX perf_benchmarks_order ON perf_benchmarks (created_ms, id);
-- One queued or running benchmark per service.
CREATE UNIQUE INDEX perf_benchmarks_active_key ON perf_benchmarks (service) WHERE status IN ('queued', 'running');
