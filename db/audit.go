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
// record commit or roll back together. Within withTx the entry goes to the
// transaction's outbox, which writes the audit rows and the events they
// make in one go at the end of the transaction (see events.go): a change
// costs no round trip per entry. Outside (a dry run) it is written at once.
func audit(ctx context.Context, tx pgx.Tx, actor Actor, e event) error {
	if o := outboxOf(tx); o != nil {
		o.add(actor, e, nil)
		return nil
	}
	return writeAudit(ctx, tx, []outboxEntry{{actor: actor, e: e}})
}

// auditTagsRemoved records the removal of tags (which pointed at dgst) with
// their manifest: one entry, however many tags, because a manifest can
// carry tens of thousands of them; writeAudit expands it into a row per
// tag in the same single statement.
func auditTagsRemoved(ctx context.Context, tx pgx.Tx, actor Actor, repo string, tags []string, dgst string) error {
	if len(tags) == 0 {
		return nil
	}
	en := outboxEntry{actor: actor, e: event{action: ActionTagDelete, repository: repo, oldDigest: dgst}, tags: tags}
	if o := outboxOf(tx); o != nil {
		o.entries = append(o.entries, en)
		return nil
	}
	return writeAudit(ctx, tx, []outboxEntry{en})
}

// writeAudit appends the rows of entries to the audit log, in order, in
// one statement; an entry with tags (tag.delete) is a row per tag.
func writeAudit(ctx context.Context, tx pgx.Tx, entries []outboxEntry) error {
	n := len(entries)
	for _, en := range entries {
		n += len(en.tags)
	}
	cols := struct{ actor, reqID, tokenID, action, repo, tag, dgst, oldDgst, detail []string }{}
	add := func(en outboxEntry, tag, detail string) {
		cols.actor = append(cols.actor, en.actor.Name)
		cols.reqID = append(cols.reqID, en.actor.RequestID)
		cols.tokenID = append(cols.tokenID, en.actor.TokenID)
		cols.action = append(cols.action, en.e.action)
		cols.repo = append(cols.repo, en.e.repository)
		cols.tag = append(cols.tag, tag)
		cols.dgst = append(cols.dgst, en.e.digest)
		cols.oldDgst = append(cols.oldDgst, en.e.oldDigest)
		cols.detail = append(cols.detail, detail)
	}
	for _, en := range entries {
		if en.tags != nil {
			for _, t := range en.tags {
				add(en, t, "")
			}
			continue
		}
		var detail string
		if en.e.detail != nil {
			b, err := json.Marshal(en.e.detail)
			if err != nil {
				return fmt.Errorf("encode audit detail: %w", err)
			}
			detail = string(b)
		}
		add(en, en.e.tag, detail)
	}
	_, err := tx.Exec(ctx, `
INSERT INTO audit_log (actor, request_id, token_id, action, repository, tag, digest, old_digest, detail)
SELECT a, r, NULLIF(k, ''), c, p, NULLIF(t, ''), NULLIF(d, ''), NULLIF(o, ''), NULLIF(j, '')::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])
    WITH ORDINALITY AS u(a, r, k, c, p, t, d, o, j, n)
ORDER BY n`, cols.actor, cols.reqID, cols.tokenID, cols.action, cols.repo, cols.tag, cols.dgst, cols.oldDgst, cols.detail)
	if err != nil {
		return fmt.Errorf("write audit log (%s): %w", entries[0].e.action, err)
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
