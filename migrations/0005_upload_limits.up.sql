-- Upload sessions are counted per repository when one is opened, to
-- enforce the limit on open sessions (--max-upload-sessions).
BEGIN;
CREATE INDEX uploads_repository ON uploads (repository_id);
COMMIT;
