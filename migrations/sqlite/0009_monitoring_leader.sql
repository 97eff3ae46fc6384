-- Where the monitoring replica holding the evaluation lease is reached: written by it when
-- it takes the lease, read by the others every second, so that they forward pushes to it.
CREATE TABLE monitoring_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    url TEXT NOT NULL,
    since_ms BIGINT NOT NULL
);
