-- Monitoring: alert rules, webhook receivers (header values sealed), the rules' receivers,
-- silences and alerts. Documents are the monitoring service's own records (see
-- services/monitoring/src/model.rs); instants that queries compare are epoch milliseconds.

CREATE TABLE monitoring_alert_rules (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL CONSTRAINT monitoring_alert_rules_name_key UNIQUE,
    doc JSONB NOT NULL
);

CREATE TABLE monitoring_receivers (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL CONSTRAINT monitoring_receivers_name_key UNIQUE,
    doc JSONB NOT NULL,
    sealed_headers TEXT NOT NULL
);

-- Which receivers a rule notifies: a receiver still named here cannot be deleted.
CREATE TABLE monitoring_rule_receivers (
    rule_id UUID NOT NULL REFERENCES monitoring_alert_rules (id) ON DELETE CASCADE,
    receiver_id UUID NOT NULL REFERENCES monitoring_receivers (id),
    PRIMARY KEY (rule_id, receiver_id)
);
CREATE INDEX monitoring_rule_receivers_receiver ON monitoring_rule_receivers (receiver_id);

CREATE TABLE monitoring_silences (
    id UUID PRIMARY KEY,
    doc JSONB NOT NULL,
    ends_at_ms BIGINT NOT NULL
);

-- Alerts outlive their rules (resolved alerts stay readable for days), so no foreign key.
CREATE TABLE monitoring_alerts (
    id UUID PRIMARY KEY,
    rule_id UUID NOT NULL,
    state TEXT NOT NULL,
    doc JSONB NOT NULL,
    resolved_at_ms BIGINT
);
CREATE INDEX monitoring_alerts_resolved_at ON monitoring_alerts (resolved_at_ms);
