BEGIN;
DROP INDEX uploads_repository;
COMMIT;
