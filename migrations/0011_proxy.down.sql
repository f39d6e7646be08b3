BEGIN;
DROP TABLE manifest_absent_refs;
DROP TABLE proxy_checks;
DROP TABLE proxy_claims;
DROP TABLE proxy_keys;
DROP TABLE proxies;
COMMIT;
