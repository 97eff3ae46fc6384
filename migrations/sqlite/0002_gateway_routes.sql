-- Gateway routes: which service answers which version and path prefix. The route document
-- is the contract's Route; `version` orders concurrent updates (If-Match).

CREATE TABLE gateway_routes (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL CONSTRAINT gateway_routes_name_key UNIQUE,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL
);
