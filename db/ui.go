package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The reads of the web interface (package ui). Each page is one statement,
// paginated by keyset (the last name, tag or id of the previous page), so
// that a page costs the same on the first screen as on the thousandth.

// RepositoryQuery selects a page of repository summaries.
type RepositoryQuery struct {
	After  string // the last name of the previous page
	Search string // a substring of the name; empty: every repository
	Limit  int
	// Visible, unless All, keeps only the repositories some subject's
	// winning grant lets the caller pull (as RepositoryListVisible).
	All     bool
	Visible []GrantPattern
}

// RepositorySummary is a repository as the list of repositories shows it.
type RepositorySummary struct {
	Name      string
	Tags      int64
	Manifests int64 // live manifests, tagged or not
	// Size is the bytes of the distinct blobs the live manifests
	// reference: a layer shared by ten images counts once.
	Size int64
	// ManifestBytes is the bytes of the live manifests: with Size, the
	// repository's usage (see usage.go).
	ManifestBytes int64
	// LastPush is when a manifest was last pushed or a tag last moved;
	// nil for a repository holding only blobs.
	LastPush *time.Time
}

// repositorySummariesSQL walks the name index from $1, keeps the names
// that contain $2 and that the caller may pull ($3, or the patterns $4–$7
// as in repositoryListVisibleSQL), stops after $8, and only then counts,
// for those few rows, their tags, manifests and bytes (the usage row).
const repositorySummariesSQL = `
WITH page AS (
    SELECT r.id, r.name FROM repositories r
    WHERE r.name > $1 AND ($2 = '' OR strpos(r.name, $2) > 0)
      AND ($3 OR EXISTS (
        SELECT 1 FROM (
            SELECT p.pull, p.length = max(p.length) OVER (PARTITION BY p.subject) AS longest
            FROM unnest($4::text[], $5::text[], $6::int[], $7::bool[]) AS p(subject, regex, length, pull)
            WHERE r.name ~ p.regex
        ) m
        WHERE m.longest AND m.pull))
    ORDER BY r.name LIMIT $8
)
SELECT p.name,
    (SELECT count(*) FROM tags t WHERE t.repository_id = p.id),
    (SELECT count(*) FROM manifests m WHERE m.repository_id = p.id AND m.deleted_at IS NULL),
    coalesce(u.blob_bytes, 0), coalesce(u.manifest_bytes, 0),
    greatest(
        (SELECT max(m.created_at) FROM manifests m WHERE m.repository_id = p.id AND m.deleted_at IS NULL),
        (SELECT max(t.updated_at) FROM tags t WHERE t.repository_id = p.id))
FROM page p LEFT JOIN repository_usage u ON u.repository_id = p.id ORDER BY p.name`

// RepositorySummaries returns a page of repositories in byte order, with
// their counts, and whether more follow.
func (d *DB) RepositorySummaries(ctx context.Context, q RepositoryQuery) ([]RepositorySummary, bool, error) {
	var subjects, regexes []string
	var lengths []int32
	var pull []bool
	if !q.All {
		// As in RepositoryListVisible: a subject with no pull anywhere
		// makes nothing visible, so its patterns are left out.
		pulls := map[string]bool{}
		for _, g := range q.Visible {
			pulls[g.Subject] = pulls[g.Subject] || g.Pull
		}
		for _, g := range q.Visible {
			if pulls[g.Subject] {
				subjects, regexes = append(subjects, g.Subject), append(regexes, g.Regex)
				lengths, pull = append(lengths, int32(g.Length)), append(pull, g.Pull)
			}
		}
		if len(subjects) == 0 {
			return []RepositorySummary{}, false, nil
		}
	}
	rows, err := d.q.Query(ctx, repositorySummariesSQL, q.After, q.Search, q.All,
		nonNil(subjects), nonNil(regexes), nonNil(lengths), nonNil(pull), q.Limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("list repository summaries: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RepositorySummary, error) {
		var s RepositorySummary
		err := row.Scan(&s.Name, &s.Tags, &s.Manifests, &s.Size, &s.ManifestBytes, &s.LastPush)
		return s, err
	})
	if err != nil {
		return nil, false, fmt.Errorf("list repository summaries: %w", err)
	}
	return pageOf(list, q.Limit)
}

// Usage is the repository's usage: its blobs and its manifests.
func (s RepositorySummary) Usage() int64 { return s.Size + s.ManifestBytes }

// pageOf cuts a list read with limit+1 rows to limit, and says whether
// there was more.
func pageOf[T any](list []T, limit int) ([]T, bool, error) {
	list = nonNil(list)
	if len(list) > limit {
		return list[:limit], true, nil
	}
	return list, false, nil
}

// TagQuery selects a page of a repository's tags.
type TagQuery struct {
	After  string // the last tag of the previous page
	Search string // a substring of the tag; empty: every tag
	Limit  int
}

// TagSummary is a tag as the repository page shows it.
type TagSummary struct {
	Name         string
	Digest       string
	MediaType    string
	ArtifactType string
	// Size is the manifest and the distinct blobs it needs: its config and
	// layers, or for an index those of the manifests it lists.
	Size     int64
	PushedAt time.Time // when the tag was last pointed where it points
	// Pulls and LastPulled are the tag's pull statistics, as far as the
	// replicas have flushed them (LastPulled zero: never pulled).
	Pulls      int64
	LastPulled time.Time
	// Payload is the manifest of an index or manifest list (for its
	// platforms), nil for others.
	Payload []byte
}

// indexMediaTypes are the media types whose payload TagSummaries reads.
var indexMediaTypes = []string{"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}

// TagSummaries returns a page of the tags of repo in byte order, and
// whether more follow. ErrRepositoryUnknown when repo does not exist.
func (d *DB) TagSummaries(ctx context.Context, repo string, q TagQuery) ([]TagSummary, bool, error) {
	rows, err := d.q.Query(ctx, `
SELECT t.name, t.digest, t.media_type, t.artifact_type, t.size, t.updated_at, t.payload, t.pull_count, t.last_pulled_at
FROM repositories r
LEFT JOIN LATERAL (
    SELECT t.name, m.digest, m.media_type, coalesce(m.artifact_type, '') AS artifact_type, t.updated_at,
        coalesce(p.pull_count, 0) AS pull_count, p.last_pulled_at,
        CASE WHEN m.media_type = ANY ($5) THEN m.payload END AS payload,
        m.size + (SELECT coalesce(sum(b.size), 0)::bigint FROM blobs b WHERE b.digest IN (
            SELECT mb.digest FROM manifest_blobs mb WHERE mb.manifest_id = m.id
            UNION
            SELECT mb.digest FROM manifest_children c JOIN manifest_blobs mb ON mb.manifest_id = c.child_id
            WHERE c.parent_id = m.id)) AS size
    FROM tags t JOIN manifests m ON m.id = t.manifest_id
    LEFT JOIN LATERAL (
        SELECT p.pull_count, p.last_pulled_at FROM tag_pulls p
        WHERE p.repository_id = t.repository_id AND p.name = t.name LIMIT 1) p ON true
    WHERE t.repository_id = r.id AND t.name > $2 AND ($3 = '' OR strpos(t.name, $3) > 0)
    ORDER BY t.name LIMIT $4
) t ON true
WHERE r.name = $1`, repo, q.After, q.Search, q.Limit+1, indexMediaTypes)
	if err != nil {
		return nil, false, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	found := false
	var list []TagSummary
	for rows.Next() {
		found = true
		var name, dgst, mediaType, artifactType *string
		var size *int64
		var at *time.Time
		var payload []byte
		var pulls *int64
		var pulledAt *time.Time
		if err := rows.Scan(&name, &dgst, &mediaType, &artifactType, &size, &at, &payload, &pulls, &pulledAt); err != nil {
			return nil, false, fmt.Errorf("list tags of %s: %w", repo, err)
		}
		if name == nil {
			continue // no (matching) tag
		}
		list = append(list, TagSummary{Name: *name, Digest: *dgst, MediaType: *mediaType, ArtifactType: *artifactType,
			Size: *size, PushedAt: *at, Payload: payload, Pulls: *pulls})
		if pulledAt != nil {
			list[len(list)-1].LastPulled = *pulledAt
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	if !found {
		return nil, false, repositoryUnknown(repo)
	}
	return pageOf(list, q.Limit)
}

// ManifestDetail is a live manifest as its page shows it.
type ManifestDetail struct {
	Manifest
	ArtifactType string
	Tags         []string
	CreatedAt    time.Time
	// TotalSize is as TagSummary.Size.
	TotalSize int64
	// ListedBy are the live indexes of the repository that list the
	// manifest, which keep it from being deleted.
	ListedBy []string
}

// ManifestDetailGet returns live manifest dgst of repo with its payload and
// tags. ErrManifestUnknown when there is none.
func (d *DB) ManifestDetailGet(ctx context.Context, repo, dgst string) (ManifestDetail, error) {
	var m ManifestDetail
	err := d.q.QueryRow(ctx, `
SELECT m.digest, m.media_type, m.size, m.payload, coalesce(m.artifact_type, ''), m.created_at,
    ARRAY(SELECT t.name FROM tags t WHERE t.manifest_id = m.id ORDER BY t.name),
    m.size + (SELECT coalesce(sum(b.size), 0)::bigint FROM blobs b WHERE b.digest IN (
        SELECT mb.digest FROM manifest_blobs mb WHERE mb.manifest_id = m.id
        UNION
        SELECT mb.digest FROM manifest_children c JOIN manifest_blobs mb ON mb.manifest_id = c.child_id
        WHERE c.parent_id = m.id)),
    ARRAY(SELECT p.digest FROM manifest_children c JOIN manifests p ON p.id = c.parent_id
          WHERE c.child_id = m.id AND p.deleted_at IS NULL ORDER BY p.digest)
FROM repositories r JOIN manifests m ON m.repository_id = r.id
WHERE r.name = $1 AND m.digest = $2 AND m.deleted_at IS NULL`, repo, dgst).Scan(
		&m.Digest, &m.MediaType, &m.Size, &m.Payload, &m.ArtifactType, &m.CreatedAt, &m.Tags, &m.TotalSize, &m.ListedBy)
	if errors.Is(err, pgx.ErrNoRows) {
		return m, manifestUnknown(repo, dgst)
	}
	if err != nil {
		return m, fmt.Errorf("read manifest %s of %s: %w", dgst, repo, err)
	}
	m.Tags, m.ListedBy = nonNil(m.Tags), nonNil(m.ListedBy)
	return m, nil
}

// AuditQuery selects a page of a repository's audit trail.
type AuditQuery struct {
	Before int64  // the id of the last entry of the previous page; 0: from the newest
	Action string // one action (ActionTagUntag…); empty: all
	Limit  int
}

// AuditEntry is one row of the audit trail.
type AuditEntry struct {
	ID        int64
	At        time.Time
	Actor     string
	Action    string
	Tag       string
	Digest    string
	OldDigest string
	RequestID string
	TokenID   string
	Detail    json.RawMessage
}

// AuditList returns a page of the audit trail of repository repo, newest
// first, and whether more follow. The trail outlives the repository's rows,
// so an unknown repository simply has an empty trail.
func (d *DB) AuditList(ctx context.Context, repo string, q AuditQuery) ([]AuditEntry, bool, error) {
	// Newest first by (at, id), which the (repository, at) index serves;
	// the previous page's last entry is found by its id.
	rows, err := d.q.Query(ctx, `
SELECT a.id, a.at, a.actor, a.action, coalesce(a.tag, ''), coalesce(a.digest, ''), coalesce(a.old_digest, ''),
    a.request_id, coalesce(a.token_id, ''), a.detail
FROM audit_log a
WHERE a.repository = $1 AND ($2 = '' OR a.action = $2)
  AND ($3 = 0 OR (a.at, a.id) < (SELECT at, id FROM audit_log WHERE id = $3))
ORDER BY a.at DESC, a.id DESC LIMIT $4`, repo, q.Action, q.Before, q.Limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("read the audit trail of %s: %w", repo, err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (AuditEntry, error) {
		var e AuditEntry
		err := row.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &e.Tag, &e.Digest, &e.OldDigest, &e.RequestID, &e.TokenID, &e.Detail)
		return e, err
	})
	if err != nil {
		return nil, false, fmt.Errorf("read the audit trail of %s: %w", repo, err)
	}
	return pageOf(list, q.Limit)
}

// StorageSummary is what the registry holds, for the storage page.
type StorageSummary struct {
	Repositories     int64
	Manifests        int64 // live
	DeletedManifests int64 // tombstones that garbage collection has not purged yet
	Tags             int64
	Blobs            int64 // ready
	BlobBytes        int64 // of the ready blobs
	BlobsDeleting    int64 // claimed by garbage collection
	BlobsMissing     int64 // found gone by berth check --repair
	Uploads          int64 // open upload sessions
	UploadBytes      int64
	GCQueued, GCDue  int64
}

// StorageSummaryGet counts what the registry holds. It reads every blob
// row, which for millions of blobs takes a moment: it serves a page that
// admins open, not a client's request.
func (d *DB) StorageSummaryGet(ctx context.Context) (StorageSummary, error) {
	var s StorageSummary
	err := d.q.QueryRow(ctx, `
SELECT (SELECT count(*) FROM repositories),
    (SELECT count(*) FROM manifests WHERE deleted_at IS NULL),
    (SELECT count(*) FROM manifests WHERE deleted_at IS NOT NULL),
    (SELECT count(*) FROM tags),
    b.ready, b.bytes, b.deleting, b.missing,
    (SELECT count(*) FROM uploads), (SELECT coalesce(sum(size), 0)::bigint FROM uploads)
FROM (SELECT count(*) FILTER (WHERE state = 'ready') AS ready,
        coalesce(sum(size) FILTER (WHERE state = 'ready'), 0)::bigint AS bytes,
        count(*) FILTER (WHERE state = 'deleting') AS deleting,
        count(*) FILTER (WHERE state = 'missing') AS missing
      FROM blobs) b`).Scan(&s.Repositories, &s.Manifests, &s.DeletedManifests, &s.Tags,
		&s.Blobs, &s.BlobBytes, &s.BlobsDeleting, &s.BlobsMissing, &s.Uploads, &s.UploadBytes)
	if err != nil {
		return s, fmt.Errorf("count storage: %w", err)
	}
	s.GCQueued, s.GCDue, err = d.GCQueueStats(ctx)
	return s, err
}

// GCRecent returns the latest n changes garbage collection made (the audit
// rows of its actor), newest first. It walks the audit log's time index
// back from now, so it is quick while collections are frequent.
func (d *DB) GCRecent(ctx context.Context, n int) ([]GCChange, error) {
	rows, err := d.q.Query(ctx, `
SELECT id, at, action, repository, coalesce(digest, '') FROM audit_log
WHERE actor = $1 ORDER BY at DESC, id DESC LIMIT $2`, gcActor.Name, n)
	if err != nil {
		return nil, fmt.Errorf("read recent collections: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (GCChange, error) {
		var c GCChange
		err := row.Scan(&c.ID, &c.At, &c.Action, &c.Repository, &c.Digest)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read recent collections: %w", err)
	}
	return nonNil(list), nil
}

// GCChange is one change garbage collection made.
type GCChange struct {
	ID         int64
	At         time.Time
	Action     string // blob.delete, manifest.purge, manifest.delete (untagged), upload.expire…
	Repository string
	Digest     string
}
