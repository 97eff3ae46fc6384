-- Monitoring: alert rules, webhook receivers (header values sealed), the rules' receivers,
-- silences and alerts. Documents are the monitoring service's own records (see
-- services/monitoring/src/model.rs); instants that queries compare are epoch milliseconds.

CREATE TABLE monitoring_alert_rules (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL CONSTRAINT monitoring_alert_rules_name_key UNIQUE,
    doc TEXT NOT NULL
);

CREATE TABLE monitoring_receivers (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL CONSTRAINT monitoring_receivers_name_key UNIQUE,
    doc TEXT NOT NULL,
    sealed_headers TEXT NOT NULL
);

-- Which receivers a rule notifies: a receiver still named here cannot be deleted.
CREATE TABLE monitoring_rule_receivers (
    rule_id BLOB NOT NULL REFERENCES monitoring_alert_rules (id) ON DELETE CASCADE,
    receiver_id BLOB NOT NULL REFERENCES monitoring_receivers (id),
    PRIMARY KEY (rule_id, receiver_id)
);
CREATE INDEX monitoring_rule_receivers_receiver ON monitoring_rule_receivers (receiver_id);

CREATE TABLE monitoring_silences (
    id BLOB PRIMARY KEY,
    doc TEXT NOT NULL,
    ends_at_ms BIGINT NOT NULL
);

-- Alerts outlive their rules (resolved alerts stay readable for days), so no foreign key.
CREATE TABLE monitoring_alerts (
    id BLOB PRIMARY KEY,
    rule_id BLOB NOT NULL,
    state TEXT NOT NULL,
    doc TEXT NOT NULL,
    resolved_at_ms BIGINT
);
CREATE INDEX monitoring_alerts_resolved_at ON monitoring_alerts (resolved_at_ms);
