BEGIN;
DROP INDEX audit_log_old_digest;
DROP TABLE retention_policies;
COMMIT;
