BEGIN;
ALTER TABLE manifest_children DROP CONSTRAINT manifest_children_child_id_fkey;
ALTER TABLE manifest_children ADD CONSTRAINT manifest_children_child_id_fkey
    FOREIGN KEY (child_id) REFERENCES manifests (id);
DROP INDEX blobs_not_ready;
UPDATE blobs SET state = 'deleting' WHERE state = 'missing';
ALTER TABLE blobs DROP CONSTRAINT blobs_state_check;
ALTER TABLE blobs ADD CONSTRAINT blobs_state_check CHECK (state IN ('ready', 'deleting'));
DROP TABLE gc_queue;
COMMIT;
