package db

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// # Events: a transactional outbox
//
// Every transaction that changes what a client can see collects its audit
// entries (see audit) in its outbox, and at its very end, after every
// other lock it takes, writes them: the audit rows, in one statement, and
// the events they make: rows of the events table, plus one row of
// webhook_deliveries for each webhook that wants the event. They commit or
// roll back with the change, so a change is never without its event, nor
// an event without its change.
//
// Each repository has its own sequence of events, numbered from 1 without
// gaps (event_streams). A transaction takes its numbers with an upsert of
// the repository's event_streams row, which it then holds locked until it
// commits: a second transaction with events in the same repository waits
// there, so numbers commit in the order they were given, and a rollback
// gives them back. A consumer that reads a repository's events by seq
// therefore never skips one that commits later with a smaller number (the
// classic outbox bug with identity columns, which are handed out outside
// the transaction's order). The wait is short: it starts at the last
// statement before the commit.
//
// Lock order: the event_streams rows come after everything in the list of
// db.go (after the garbage candidates and usage), in repository name order.

// Event actions, as webhooks and the events API name them. push, pull,
// mount and delete are the reference registry's; tag, untag and restore
// are Berth's tag changes that are not part of a push.
const (
	EventPush    = "push"
	EventPull    = "pull"
	EventMount   = "mount"
	EventDelete  = "delete"
	EventTag     = "tag"
	EventUntag   = "untag"
	EventRestore = "restore"
)

// EventActions are all the actions, in the order the README lists them.
var EventActions = []string{EventPush, EventPull, EventMount, EventDelete, EventTag, EventUntag, EventRestore}

// Event is one event, in the JSON form of the reference registry's
// notifications (so existing receivers parse it) plus Berth's seq,
// previousDigest and target.tags.
type Event struct {
	ID             string       `json:"id"`
	Seq            int64        `json:"seq"`
	Timestamp      time.Time    `json:"timestamp"`
	Action         string       `json:"action"`
	Target         EventTarget  `json:"target"`
	PreviousDigest string       `json:"previousDigest,omitempty"`
	Request        EventRequest `json:"request"`
	Actor          EventActor   `json:"actor"`
	Source         EventSource  `json:"source"`
}

// EventTarget is what an event is about: a manifest or a blob.
type EventTarget struct {
	MediaType      string   `json:"mediaType,omitempty"`
	Digest         string   `json:"digest,omitempty"`
	Size           int64    `json:"size"`
	Length         int64    `json:"length,omitempty"` // the reference registry's older name for size
	Repository     string   `json:"repository"`
	FromRepository string   `json:"fromRepository,omitempty"`
	URL            string   `json:"url,omitempty"`
	Tag            string   `json:"tag,omitempty"`
	Tags           []string `json:"tags,omitempty"` // the tags a delete by digest removed
}

// EventRequest is the HTTP request that made a change; empty for the
// collector's own changes.
type EventRequest struct {
	ID        string `json:"id"`
	Addr      string `json:"addr,omitempty"`
	Host      string `json:"host,omitempty"`
	Method    string `json:"method"`
	UserAgent string `json:"useragent"`
}

// EventActor is who made a change: the principal, "anonymous@<addr>"
// without authentication, or "gc".
type EventActor struct {
	Name string `json:"name,omitempty"`
}

// EventSource is the Berth process that wrote an event.
type EventSource struct {
	Addr       string `json:"addr,omitempty"`
	InstanceID string `json:"instanceID,omitempty"`
}

// EventsConfig is what the outbox needs to know about this process.
type EventsConfig struct {
	Source EventSource
	// BaseURL is how clients reach the registry ("https://registry.example"),
	// for target.url when the change has no request of its own to take it
	// from (garbage collection).
	BaseURL string
	// Written, if set, is called after a transaction that wrote events
	// commits: it wakes this process's delivery worker.
	Written func()
}

// outbox collects the audit entries of one transaction attempt.
type outbox struct {
	entries []outboxEntry
	// usage holds the manifests that became live or not live, for
	// usageFlush; warnings the quotas whose warn threshold the
	// transaction crossed, logged once it commits (see usage.go).
	usage    []usageNote
	warnings []quotaWarning
	// locked holds the top-level namespaces whose usage advisory lock the
	// transaction holds already.
	locked map[string]bool
}

type outboxEntry struct {
	actor Actor
	e     event
	tags  []string // tag.delete: the tags removed with a manifest
}

func (o *outbox) add(actor Actor, e event, tags []string) {
	if o != nil {
		o.entries = append(o.entries, outboxEntry{actor: actor, e: e, tags: tags})
	}
}

// outboxOf is the outbox of tx, nil outside withTx (a dry run).
func outboxOf(tx pgx.Tx) *outbox {
	if g, ok := tx.(guardedTx); ok {
		return g.out
	}
	return nil
}

// fold turns the audit entries of a transaction into events, in the order
// of the changes, following the shapes receivers rely on:
//   - a manifest pushed by tag is one push event per tag, with target.tag
//     (and previousDigest when the tag moved); without a tag, one push
//     event; a manifest that existed already only gets tag events; a
//     restore that revives a deleted manifest is one restore event;
//   - a delete by digest is one delete event naming the tags it removed;
//   - upload starts and cancels, purges of tombstones and the removal of
//     blob bytes are not events (the audit log has them): no repository
//     sees them change.
func (d *DB) fold(entries []outboxEntry) []Event {
	type key struct{ repo, digest string }
	pushed := map[key]*outboxEntry{}
	tagged := map[key]bool{}
	removed := map[key][]string{}
	for i := range entries {
		en := &entries[i]
		k := key{en.e.repository, en.e.digest}
		switch en.e.action {
		case ActionManifestPush:
			pushed[k] = en
		case ActionTagDelete:
			k.digest = en.e.oldDigest
			removed[k] = append(removed[k], en.tags...)
		}
	}
	var out []Event
	for _, en := range entries {
		e := en.e
		k := key{e.repository, e.digest}
		ev := Event{Target: EventTarget{Repository: e.repository, Digest: e.digest, Tag: e.tag}}
		manifestURL := true
		switch e.action {
		case ActionBlobUpload:
			ev.Action, manifestURL = EventPush, false
			ev.Target.MediaType, ev.Target.Size = blobMediaType, detailInt(e.detail, "size")
		case ActionBlobMount:
			ev.Action, manifestURL = EventMount, false
			ev.Target.MediaType = blobMediaType
			ev.Target.FromRepository, _ = e.detail["from"].(string)
		case ActionBlobUnlink:
			ev.Action, manifestURL = EventDelete, false
			ev.Target.MediaType = blobMediaType
		case ActionManifestPush:
			if tagged[k] {
				continue // announced with its tags
			}
			ev.Action = EventPush
		case ActionTagCreate, ActionTagMove:
			ev.Action, ev.PreviousDigest = EventTag, e.oldDigest
			if p := pushed[k]; p != nil {
				ev.Action, tagged[k] = EventPush, true
			}
		case ActionTagRestore:
			// A restore may revive a deleted manifest: one restore event,
			// not a push as well.
			ev.Action, ev.PreviousDigest = EventRestore, e.oldDigest
			if pushed[k] != nil {
				tagged[k] = true
			}
		case ActionTagUntag:
			ev.Action, ev.Target.Digest = EventUntag, e.oldDigest
			k.digest = e.oldDigest
		case ActionManifestDelete:
			ev.Action, ev.Target.Tags = EventDelete, removed[k]
		default:
			continue
		}
		if e.repository == "" {
			continue
		}
		if p := pushed[k]; p != nil && manifestURL {
			ev.Target.MediaType, _ = p.e.detail["media_type"].(string)
			ev.Target.Size = detailInt(p.e.detail, "size")
		}
		ev.Target.Length = ev.Target.Size
		base := d.events.BaseURL
		if r := en.actor.Request; r != nil {
			ev.Request = EventRequest{ID: en.actor.RequestID, Addr: r.Addr, Host: r.Host, Method: r.Method, UserAgent: r.UserAgent}
			if r.BaseURL != "" {
				base = r.BaseURL
			}
		}
		kind := "manifests"
		if !manifestURL {
			kind = "blobs"
		}
		ev.Target.URL = fmt.Sprintf("%s/v2/%s/%s/%s", strings.TrimSuffix(base, "/"), ev.Target.Repository, kind, ev.Target.Digest)
		ev.Actor = EventActor{Name: en.actor.Name}
		ev.Source = d.events.Source
		out = append(out, ev)
	}
	return out
}

// blobMediaType is the media type of blob events: the registry does not
// know what a blob is until a manifest says, and the same bytes can be a
// layer in one manifest and a config in another.
const blobMediaType = "application/octet-stream"

func detailInt(detail map[string]any, k string) int64 {
	switch v := detail[k].(type) {
	case int:
		return int64(v)
	case int64:
		return v
	case float64:
		return int64(v)
	}
	return 0
}

// flushOutbox writes the audit rows and the events of a transaction, at
// its end (see the top of this file). It returns how many events it wrote.
//
// The usage changes (see usage.go) go between the reads and the events:
// after every other change of the transaction, and as late as they can,
// since the repository's usage rows stay locked from there to the commit.
func (d *DB) flushOutbox(ctx context.Context, tx pgx.Tx, o *outbox) (int, error) {
	if o == nil || len(o.entries) == 0 && len(o.usage) == 0 {
		return 0, nil
	}
	var evs []Event
	if len(o.entries) > 0 {
		if err := writeAudit(ctx, tx, o.entries); err != nil {
			return 0, err
		}
		evs = d.fold(o.entries)
	}
	if len(evs) > 0 {
		if err := fillTargets(ctx, tx, evs); err != nil {
			return 0, err
		}
	}
	if err := d.usageFlush(ctx, tx, o); err != nil {
		return 0, err
	}
	if len(evs) == 0 {
		return 0, nil
	}
	return len(evs), writeEvents(ctx, tx, evs)
}

// fillTargets looks up the media type and size of the targets the audit
// entries did not carry: manifests that were tagged, untagged, restored or
// deleted, and blobs mounted or unlinked. Tombstoned manifests and blobs
// claimed by the collector still have their rows in this transaction.
func fillTargets(ctx context.Context, tx pgx.Tx, evs []Event) error {
	var repos, manifests, blobs []string
	for _, ev := range evs {
		if ev.Target.MediaType == "" {
			repos, manifests = append(repos, ev.Target.Repository), append(manifests, ev.Target.Digest)
		} else if ev.Target.MediaType == blobMediaType && ev.Target.Size == 0 {
			blobs = append(blobs, ev.Target.Digest)
		}
	}
	if len(manifests) == 0 && len(blobs) == 0 {
		return nil
	}
	type found struct {
		mediaType string
		size      int64
	}
	got := map[[2]string]found{}
	rows, err := tx.Query(ctx, `
SELECT u.repo, u.digest, m.media_type, m.size
FROM unnest($1::text[], $2::text[]) AS u(repo, digest)
JOIN repositories r ON r.name = u.repo
JOIN manifests m ON m.repository_id = r.id AND m.digest = u.digest
UNION ALL
SELECT '', b.digest, '', b.size FROM blobs b WHERE b.digest = ANY($3)`, repos, manifests, blobs)
	if err != nil {
		return fmt.Errorf("read event targets: %w", err)
	}
	for rows.Next() {
		var repo, dgst string
		var f found
		if err := rows.Scan(&repo, &dgst, &f.mediaType, &f.size); err != nil {
			return fmt.Errorf("read event targets: %w", err)
		}
		got[[2]string{repo, dgst}] = f
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read event targets: %w", err)
	}
	for i := range evs {
		t := &evs[i].Target
		if t.MediaType == "" {
			f := got[[2]string{t.Repository, t.Digest}]
			t.MediaType, t.Size = f.mediaType, f.size
		} else if t.MediaType == blobMediaType && t.Size == 0 {
			t.Size = got[[2]string{"", t.Digest}].size
		}
		t.Length = t.Size
	}
	return nil
}

// writeEvents numbers evs in their repositories and writes them, with
// their deliveries: one statement per repository, in name order (the lock
// order of event_streams rows).
func writeEvents(ctx context.Context, tx pgx.Tx, evs []Event) error {
	byRepo := map[string][]Event{}
	for _, ev := range evs {
		byRepo[ev.Target.Repository] = append(byRepo[ev.Target.Repository], ev)
	}
	repos := make([]string, 0, len(byRepo))
	for r := range byRepo {
		repos = append(repos, r)
	}
	slices.Sort(repos)
	for _, repo := range repos {
		list := byRepo[repo]
		ids := make([]string, len(list))
		actions := make([]string, len(list))
		bodies := make([]string, len(list))
		for i, ev := range list {
			ids[i], actions[i] = newEventID(), ev.Action
			b, err := json.Marshal(ev)
			if err != nil {
				return fmt.Errorf("encode event: %w", err)
			}
			bodies[i] = string(b)
		}
		// The upsert locks the repository's stream row until commit (see
		// the top of this file); the events take the numbers it hands out,
		// the deliveries go to every webhook whose filters match.
		_, err := tx.Exec(ctx, `
WITH s AS (
    INSERT INTO event_streams AS s (repository, last_seq) VALUES ($1, $2)
    ON CONFLICT (repository) DO UPDATE SET last_seq = s.last_seq + EXCLUDED.last_seq
    RETURNING last_seq, clock_timestamp() AS at
), e AS (
    INSERT INTO events (uuid, repository, seq, at, action, body)
    SELECT u.uuid, $1, s.last_seq - $2 + u.n, s.at, u.action, u.body::jsonb
    FROM s, unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(uuid, action, body, n)
    RETURNING id, seq, at, action
)
INSERT INTO webhook_deliveries (webhook_id, event_id, repository, seq, next_at, created_at)
SELECT w.id, e.id, $1, e.seq, e.at, e.at
FROM e JOIN webhooks w ON (w.actions IS NULL OR e.action = ANY (w.actions))
    AND (w.repos_re IS NULL OR $1 ~ ANY (w.repos_re))
    AND (e.action <> 'pull' OR w.pulls)`,
			repo, len(list), ids, actions, bodies)
		if err != nil {
			return fmt.Errorf("write events of %s: %w", repo, err)
		}
	}
	return nil
}

// newEventID is a random (version 4) UUID, as the reference registry's
// event ids are.
func newEventID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// PullEvent is one pull, buffered by the API and written in batches (see
// PullEventsWrite).
type PullEvent struct {
	Actor      Actor
	Repository string
	Digest     string
	MediaType  string
	Size       int64
	Tag        string
	Blob       bool
}

// PullEventsWrite writes buffered pull events, in one transaction, for
// the webhooks that asked for pulls (WantPulls). They are numbered in
// their repositories' sequences like any other event.
func (d *DB) PullEventsWrite(ctx context.Context, pulls []PullEvent) error {
	if len(pulls) == 0 {
		return nil
	}
	err := d.withTx(ctx, func(tx pgx.Tx) error {
		evs := make([]Event, 0, len(pulls))
		for _, p := range pulls {
			kind := "manifests"
			if p.Blob {
				kind = "blobs"
			}
			base := d.events.BaseURL
			ev := Event{Action: EventPull, Target: EventTarget{MediaType: p.MediaType, Digest: p.Digest, Size: p.Size, Length: p.Size,
				Repository: p.Repository, Tag: p.Tag}, Actor: EventActor{Name: p.Actor.Name}, Source: d.events.Source}
			if r := p.Actor.Request; r != nil {
				ev.Request = EventRequest{ID: p.Actor.RequestID, Addr: r.Addr, Host: r.Host, Method: r.Method, UserAgent: r.UserAgent}
				if r.BaseURL != "" {
					base = r.BaseURL
				}
			}
			ev.Target.URL = fmt.Sprintf("%s/v2/%s/%s/%s", strings.TrimSuffix(base, "/"), p.Repository, kind, p.Digest)
			evs = append(evs, ev)
		}
		return writeEvents(ctx, tx, evs)
	})
	if err == nil && d.events.Written != nil {
		d.events.Written()
	}
	return err
}

// WantPulls reports whether any webhook asked for pull events.
func (d *DB) WantPulls(ctx context.Context) (bool, error) {
	var want bool
	if err := d.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM webhooks WHERE pulls)`).Scan(&want); err != nil {
		return false, fmt.Errorf("read webhooks: %w", err)
	}
	return want, nil
}

// EventList returns up to n events of repo with seq > after, in seq
// order, and whether more follow. Events older than the retention (see
// EventsCleanup) are gone. ErrRepositoryUnknown when the repository has
// never had an event.
func (d *DB) EventList(ctx context.Context, repo string, after int64, n int) ([]Event, bool, error) {
	rows, err := d.q.Query(ctx, `
SELECT e.uuid, e.seq, e.at, e.action, e.body
FROM event_streams s
LEFT JOIN LATERAL (
    SELECT * FROM events WHERE repository = s.repository AND seq > $2 ORDER BY seq LIMIT $3
) e ON true
WHERE s.repository = $1`, repo, after, n+1)
	if err != nil {
		return nil, false, fmt.Errorf("list events of %s: %w", repo, err)
	}
	defer rows.Close()
	found := false
	evs := []Event{}
	for rows.Next() {
		found = true
		var uuid, action *string
		var seq *int64
		var at *time.Time
		var body []byte
		if err := rows.Scan(&uuid, &seq, &at, &action, &body); err != nil {
			return nil, false, fmt.Errorf("list events of %s: %w", repo, err)
		}
		if uuid == nil {
			continue
		}
		ev, err := decodeEvent(*uuid, *seq, *at, *action, body)
		if err != nil {
			return nil, false, err
		}
		evs = append(evs, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list events of %s: %w", repo, err)
	}
	if !found {
		return nil, false, repositoryUnknown(repo)
	}
	if len(evs) > n {
		return evs[:n], true, nil
	}
	return evs, false, nil
}

// decodeEvent builds an event from its row: the stored body, and the
// columns that are the same on every delivery.
func decodeEvent(uuid string, seq int64, at time.Time, action string, body []byte) (Event, error) {
	var ev Event
	if err := json.Unmarshal(body, &ev); err != nil {
		return Event{}, fmt.Errorf("decode event %s: %w", uuid, err)
	}
	ev.ID, ev.Seq, ev.Timestamp, ev.Action = uuid, seq, at.UTC(), action
	return ev, nil
}
