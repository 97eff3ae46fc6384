-- Routes gain `merge_slashes` (default true): runs of `/` in the path are sent upstream
-- as one. Stored documents get the default so that every Route document is complete.
UPDATE gateway_routes
SET doc = jsonb_set(doc, '{merge_slashes}', 'true'::jsonb)
WHERE NOT doc ? 'merge_slashes';
