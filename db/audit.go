package db

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Audit actions. Tag actions make up a tag's history.
const (
	ActionBlobUpload     = "blob.upload"
	ActionBlobMount      = "blob.mount"
	ActionBlobUnlink     = "blob.unlink"
	ActionUploadStart    = "upload.start"
	ActionUploadCancel   = "upload.cancel"
	ActionManifestPush   = "manifest.push"
	ActionManifestDelete = "manifest.delete"
	ActionTagCreate      = "tag.create"
	ActionTagMove        = "tag.move"
	ActionTagRestore     = "tag.restore"
	ActionTagUntag       = "tag.untag"
	ActionTagDelete      = "tag.delete" // removed because its manifest was deleted

	// Garbage collection and repairs; their actor is "gc".
	ActionBlobDelete    = "blob.delete"    // bytes and row of an unreferenced blob removed
	ActionBlobMissing   = "blob.missing"   // bytes found gone by berth check --repair
	ActionManifestPurge = "manifest.purge" // a tombstone past its retention removed
	ActionUploadExpire  = "upload.expire"  // an abandoned upload session ended
)

// event is one row of the audit log.
type event struct {
	action     string
	repository string
	tag        string
	digest     string
	oldDigest  string
	detail     map[string]any
}

// audit appends e to the audit log inside tx, so that the change and its
// record commit or roll back together; and to the transaction's outbox,
// which turns it into an event at the end of the transaction.
func audit(ctx context.Context, tx pgx.Tx, actor Actor, e event) error {
	outboxOf(tx).add(actor, e, nil)
	var detail []byte
	if e.detail != nil {
		var err error
		if detail, err = json.Marshal(e.detail); err != nil {
			return fmt.Errorf("encode audit detail: %w", err)
		}
	}
	_, err := tx.Exec(ctx, `
INSERT INTO audit_log (actor, request_id, token_id, action, repository, tag, digest, old_digest, detail)
VALUES ($1, $2, NULLIF($3, ''), $4, $5, NULLIF($6, ''), NULLIF($7, ''), NULLIF($8, ''), $9)`,
		actor.Name, actor.RequestID, actor.TokenID, e.action, e.repository, e.tag, e.digest, e.oldDigest, detail)
	if err != nil {
		return fmt.Errorf("write audit log (%s): %w", e.action, err)
	}
	return nil
}

// auditTagsRemoved records the removal of tags (which pointed at dgst) with
// their manifest: one statement, however many tags, because a manifest can
// carry tens of thousands of them.
func auditTagsRemoved(ctx context.Context, tx pgx.Tx, actor Actor, repo string, tags []string, dgst string) error {
	if len(tags) == 0 {
		return nil
	}
	outboxOf(tx).add(actor, event{action: ActionTagDelete, repository: repo, oldDigest: dgst}, tags)
	_, err := tx.Exec(ctx, `
INSERT INTO audit_log (actor, request_id, token_id, action, repository, tag, old_digest)
SELECT $1, $2, NULLIF($3, ''), $4, $5, t, $6 FROM unnest($7::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n`,
		actor.Name, actor.RequestID, actor.TokenID, ActionTagDelete, repo, dgst, tags)
	if err != nil {
		return fmt.Errorf("write audit log (%s): %w", ActionTagDelete, err)
	}
	return nil
}

// TagEvent is one change of a tag.
type TagEvent struct {
	ID        int64
	At        time.Time
	Action    string // one of the tag.* actions
	Digest    string // where the tag points after the change; empty when removed
	OldDigest string // where it pointed before; empty when created
	Actor     string
	RequestID string
	TokenID   string // the API token the change was made with, if any
}

// TagHistory returns up to n changes of tag in repo, newest first, older
// than the event with id before (0: from the newest), and whether more
// follow. ErrRepositoryUnknown when the repository does not exist.
func (d *DB) TagHistory(ctx context.Context, repo, tag string, before int64, n int) ([]TagEvent, bool, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := d.q.Query(ctx, `
SELECT a.id, a.at, a.action, coalesce(a.digest, ''), coalesce(a.old_digest, ''), a.actor, a.request_id, a.token_id
FROM repositories r
LEFT JOIN LATERAL (
    SELECT * FROM audit_log
    WHERE repository = r.name AND tag = $2 AND action LIKE 'tag.%' AND id < $3
    ORDER BY id DESC LIMIT $4
) a ON true
WHERE r.name = $1`, repo, tag, before, n+1)
	if err != nil {
		return nil, false, fmt.Errorf("read history of %s:%s: %w", repo, tag, err)
	}
	var events []TagEvent
	found := false
	for rows.Next() {
		found = true
		var id *int64
		var at *time.Time
		var e TagEvent
		var action, actor, reqID, tokenID *string
		if err := rows.Scan(&id, &at, &action, &e.Digest, &e.OldDigest, &actor, &reqID, &tokenID); err != nil {
			return nil, false, fmt.Errorf("read history of %s:%s: %w", repo, tag, err)
		}
		if id == nil {
			continue // the repository exists but the tag has no history
		}
		e.ID, e.At, e.Action, e.Actor, e.RequestID = *id, *at, *action, *actor, *reqID
		if tokenID != nil {
			e.TokenID = *tokenID
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read history of %s:%s: %w", repo, tag, err)
	}
	if !found {
		return nil, false, repositoryUnknown(repo)
	}
	if events == nil {
		events = []TagEvent{}
	}
	if len(events) > n {
		return events[:n], true, nil
	}
	return events, false, nil
}
