-- Routes gain `merge_slashes` (default true): runs of `/` in the path are sent upstream
-- as one. Stored documents get the default so that every Route document is complete.
UPDATE gateway_routes
SET doc = json_set(doc, '$.merge_slashes', json('true'))
WHERE json_type(doc, '$.merge_slashes') IS NULL;
