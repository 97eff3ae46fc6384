-- Service registry: services, their instances, dependencies, traffic policies and
-- configuration. Resource documents are stored as JSON beside the columns that queries
-- and constraints need; `change_index` orders changes for blocking discovery queries.

CREATE TABLE registry_index (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO registry_index (id, value) VALUES (1, 0);

CREATE TABLE services (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL CONSTRAINT services_name_key UNIQUE,
    doc JSONB NOT NULL,
    revision BIGINT NOT NULL,
    change_index BIGINT NOT NULL
);

CREATE TABLE instances (
    id UUID PRIMARY KEY,
    service_id UUID NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    doc JSONB NOT NULL,
    status TEXT NOT NULL,
    status_output TEXT,
    last_heartbeat_ms BIGINT,
    expires_at_ms BIGINT NOT NULL,
    deregister_after_ms BIGINT NOT NULL,
    CONSTRAINT instances_endpoint_key UNIQUE (service_id, address, port)
);
CREATE INDEX instances_expiry ON instances (expires_at_ms);

CREATE TABLE dependencies (
    id UUID PRIMARY KEY,
    service_id UUID NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    depends_on TEXT NOT NULL,
    doc JSONB NOT NULL,
    CONSTRAINT dependencies_edge_key UNIQUE (service_id, depends_on)
);

CREATE TABLE traffic_policies (
    service_id UUID PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
    doc JSONB NOT NULL,
    revision BIGINT NOT NULL
);

CREATE TABLE config_entries (
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    key TEXT NOT NULL,
    doc JSONB NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (service, environment, key)
);

CREATE TABLE config_history (
    service TEXT NOT NULL,
    environment TEXT NOT NULL,
    key TEXT NOT NULL,
    version BIGINT NOT NULL,
    doc JSONB NOT NULL,
    PRIMARY KEY (service, environment, key, version)
);
