-- Gateway policies: rate-limit policies and API clients. Documents are the contract's
-- RateLimitPolicy and ApiClient; the client's secret is kept only as an Argon2 PHC hash.

CREATE TABLE gateway_rate_limit_policies (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL CONSTRAINT gateway_rate_limit_policies_name_key UNIQUE,
    doc TEXT NOT NULL
);

CREATE TABLE gateway_api_clients (
    id BLOB PRIMARY KEY,
    client_id TEXT NOT NULL CONSTRAINT gateway_api_clients_client_id_key UNIQUE,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    doc TEXT NOT NULL,
    CONSTRAINT gateway_api_clients_name_key UNIQUE (tenant, name)
);

-- Routes stored before routes could require a token: public unless they named scopes.
UPDATE gateway_routes
SET doc = json_set(doc, '$.require_token',
    json(CASE WHEN json_array_length(doc, '$.required_scopes') > 0 THEN 'true' ELSE 'false' END))
WHERE json_type(doc, '$.require_token') IS NULL;
