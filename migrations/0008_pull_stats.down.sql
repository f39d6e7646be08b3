BEGIN;
DROP TABLE tag_pulls;
DROP TABLE manifest_pulls;
COMMIT;
