BEGIN;
DROP TABLE quota_blob_refs;
DROP TABLE quotas;
DROP TABLE repository_usage;
DROP TABLE repository_blob_refs;
COMMIT;
