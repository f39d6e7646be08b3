package ui

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/digests"
	"github.com/berth-registry/berth/internal/names"
	"github.com/berth-registry/berth/manifest"
)

// pageSize is the rows of a listing page: a screenful or two, and cheap
// to read whatever the size of the registry (every listing is keyset
// paginated).
const pageSize = 100

// maxSearch bounds a search term; nothing longer can match a name.
const maxSearch = names.MaxRepositoryLength

// repoPath is the interface's URL of repository name, and of its parts.
func repoPath(name string, parts ...string) string {
	if len(parts) == 0 {
		return Prefix + "/r/" + name + "/"
	}
	return Prefix + "/r/" + name + "/-/" + strings.Join(parts, "/")
}

// nextLink is the URL of the page after the one shown, keeping the query
// but for the cursor.
func nextLink(r *http.Request, key, value string) string {
	q := r.URL.Query()
	q.Set(key, value)
	q.Del("done")
	return r.URL.Path + "?" + q.Encode()
}

func (rq *request) may(s *Server, repo, action string) bool {
	return slices.Contains(s.backend.Allowed(rq.r, repo), action)
}

type repositoriesPage struct {
	Search string
	Repos  []db.RepositorySummary
	Next   string
}

func (s *Server) repositories(rq *request) {
	if rq.r.Method == http.MethodPost {
		s.notFound(rq)
		return
	}
	q := rq.r.URL.Query()
	query := db.RepositoryQuery{After: q.Get("last"), Search: clipSearch(q.Get("q")), Limit: pageSize}
	repos, more, err := s.backend.Repositories(rq.r, query)
	if err != nil {
		s.fail(rq, err)
		return
	}
	p := repositoriesPage{Search: query.Search, Repos: repos}
	if more {
		p.Next = nextLink(rq.r, "last", repos[len(repos)-1].Name)
	}
	s.render(rq, http.StatusOK, "repositories", "Repositories", p, "")
}

func clipSearch(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxSearch {
		s = s[:maxSearch]
	}
	return s
}

type repositoryPage struct {
	Name      string
	Usage     db.Usage
	Quotas    []db.Quota // covering the repository
	Search    string
	Tags      []tagRow
	Next      string
	CanDelete bool
	Tab       string
}

type tagRow struct {
	db.TagSummary
	Platforms []string // of an index
}

func (s *Server) repository(rq *request, name string) {
	if !rq.may(s, name, "pull") {
		s.forbidden(rq)
		return
	}
	q := rq.r.URL.Query()
	query := db.TagQuery{After: q.Get("last"), Search: clipSearch(q.Get("q")), Limit: pageSize}
	tags, more, err := s.db.TagSummaries(rq.r.Context(), name, query)
	if err != nil {
		s.fail(rq, err)
		return
	}
	p := repositoryPage{Name: name, Search: query.Search, CanDelete: rq.may(s, name, "delete"), Tab: "tags"}
	if p.Usage, p.Quotas, err = s.db.UsageRepository(rq.r.Context(), name); err != nil {
		s.fail(rq, err)
		return
	}
	for _, t := range tags {
		row := tagRow{TagSummary: t}
		if t.Payload != nil {
			if v, err := manifest.ParseView(t.Payload); err == nil {
				for _, m := range v.Manifests {
					if pl := platform(m.Platform); pl != "" && !slices.Contains(row.Platforms, pl) {
						row.Platforms = append(row.Platforms, pl)
					}
				}
			}
		}
		p.Tags = append(p.Tags, row)
	}
	if more {
		p.Next = nextLink(rq.r, "last", tags[len(tags)-1].Name)
	}
	s.render(rq, http.StatusOK, "repository", name, p, "")
}

type untaggedPage struct {
	Name      string
	Manifests []db.ManifestInfo
	Next      string
	CanDelete bool
	Tab       string
}

func (s *Server) untagged(rq *request, name string) {
	if !rq.may(s, name, "pull") {
		s.forbidden(rq)
		return
	}
	last := rq.r.URL.Query().Get("last")
	if last != "" {
		if _, err := digests.Parse(last); err != nil {
			last = ""
		}
	}
	list, more, err := s.db.ManifestList(rq.r.Context(), name, last, pageSize, true)
	if err != nil {
		s.fail(rq, err)
		return
	}
	p := untaggedPage{Name: name, Manifests: list, CanDelete: rq.may(s, name, "delete"), Tab: "untagged"}
	if more {
		p.Next = nextLink(rq.r, "last", list[len(list)-1].Digest)
	}
	s.render(rq, http.StatusOK, "untagged", "Untagged manifests of "+name, p, "")
}

type tagPage struct {
	Name, Tag  string
	Current    string // the digest the tag points at; "" when it does not exist
	History    []db.TagEvent
	Next       string
	CanRestore bool
	CanDelete  bool
}

func (s *Server) tag(rq *request, name, tag string) {
	if !names.ValidTag(tag) {
		s.notFound(rq)
		return
	}
	if !rq.may(s, name, "pull") {
		s.forbidden(rq)
		return
	}
	var before int64
	if v := rq.r.URL.Query().Get("before"); v != "" {
		before, _ = strconv.ParseInt(v, 10, 64)
	}
	history, more, err := s.db.TagHistory(rq.r.Context(), name, tag, before, pageSize)
	if err != nil {
		s.fail(rq, err)
		return
	}
	p := tagPage{Name: name, Tag: tag, History: history, CanRestore: rq.may(s, name, "push"), CanDelete: rq.may(s, name, "delete")}
	if m, err := s.db.ManifestByTag(rq.r.Context(), name, tag, false); err == nil {
		p.Current = m.Digest
	} else if !errors.Is(err, db.ErrManifestUnknown) && !errors.Is(err, db.ErrTagUnknown) {
		s.fail(rq, err)
		return
	}
	if more {
		p.Next = nextLink(rq.r, "before", strconv.FormatInt(history[len(history)-1].ID, 10))
	}
	s.render(rq, http.StatusOK, "tag", name+":"+tag, p, "")
}

type manifestPage struct {
	Name      string
	Detail    db.ManifestDetail
	View      manifest.View
	Config    *ocispec.Image
	Referrers []db.Referrer
	CanDelete bool
	Host      string // for the pull commands
	// Absent are the children of a sparse index (a pull-through cache)
	// that are not cached: listed, without a link.
	Absent map[string]bool
}

func (s *Server) manifest(rq *request, name, ref string) {
	dgst, err := digests.Parse(ref)
	if err != nil {
		s.notFound(rq)
		return
	}
	if !rq.may(s, name, "pull") {
		s.forbidden(rq)
		return
	}
	ctx := rq.r.Context()
	detail, err := s.db.ManifestDetailGet(ctx, name, dgst.String())
	if err != nil {
		s.fail(rq, err)
		return
	}
	p := manifestPage{Name: name, Detail: detail, CanDelete: rq.may(s, name, "delete"), Host: rq.r.Host}
	p.View, err = manifest.ParseView(detail.Payload)
	if err != nil {
		s.log.WarnContext(ctx, "manifest page: stored manifest does not decode", "repository", name, "digest", dgst, "err", err)
	}
	if c := p.View.Config; c != nil && s.blobs != nil && c.Size <= manifest.MaxConfigView &&
		(c.MediaType == ocispec.MediaTypeImageConfig || c.MediaType == "application/vnd.docker.container.image.v1+json") {
		p.Config = s.readConfig(rq, c.Digest.String(), c.Size)
	}
	if p.Referrers, err = s.db.Referrers(ctx, name, detail.Digest, ""); err != nil {
		s.fail(rq, err)
		return
	}
	if len(p.View.Manifests) > 0 {
		absent, err := s.db.ManifestAbsentChildren(ctx, name, detail.Digest)
		if err != nil {
			s.fail(rq, err)
			return
		}
		p.Absent = make(map[string]bool, len(absent))
		for _, a := range absent {
			p.Absent[a] = true
		}
	}
	s.render(rq, http.StatusOK, "manifest", name+"@"+detail.Digest, p, "")
}

// readConfig reads an image config through the blob store, at most
// MaxConfigView bytes; a config that cannot be read is left out, with a
// log line, rather than failing the page.
func (s *Server) readConfig(rq *request, dgst string, size int64) *ocispec.Image {
	d, err := digests.Parse(dgst)
	if err != nil {
		return nil
	}
	f, err := s.blobs.Open(rq.r.Context(), d)
	if err != nil {
		s.log.WarnContext(rq.r.Context(), "manifest page: read image config", "digest", dgst, "err", err)
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, min(size, manifest.MaxConfigView)))
	if err != nil {
		s.log.WarnContext(rq.r.Context(), "manifest page: read image config", "digest", dgst, "err", err)
		return nil
	}
	img, err := manifest.ParseConfig(b)
	if err != nil {
		return nil
	}
	return &img
}

type auditPage struct {
	Tab     string
	Name    string
	Action  string
	Actions []string
	Entries []db.AuditEntry
	Next    string
}

// auditActions are the actions the audit page filters on.
var auditActions = []string{
	db.ActionManifestPush, db.ActionManifestDelete, db.ActionManifestPurge,
	db.ActionTagCreate, db.ActionTagMove, db.ActionTagRestore, db.ActionTagUntag, db.ActionTagDelete,
	db.ActionBlobUpload, db.ActionBlobMount, db.ActionBlobUnlink, db.ActionBlobDelete, db.ActionBlobMissing,
	db.ActionUploadStart, db.ActionUploadCancel, db.ActionUploadExpire,
}

func (s *Server) audit(rq *request, name string) {
	if !rq.may(s, name, "pull") {
		s.forbidden(rq)
		return
	}
	q := rq.r.URL.Query()
	action := q.Get("action")
	if action != "" && !slices.Contains(auditActions, action) {
		s.render(rq, http.StatusBadRequest, "error", "Bad request", nil, "unknown action "+strconv.Quote(clipSearch(action)))
		return
	}
	var before int64
	if v := q.Get("before"); v != "" {
		before, _ = strconv.ParseInt(v, 10, 64)
	}
	entries, more, err := s.db.AuditList(rq.r.Context(), name, db.AuditQuery{Before: before, Action: action, Limit: pageSize})
	if err != nil {
		s.fail(rq, err)
		return
	}
	p := auditPage{Tab: "audit", Name: name, Action: action, Actions: auditActions, Entries: entries}
	if more {
		p.Next = nextLink(rq.r, "before", strconv.FormatInt(entries[len(entries)-1].ID, 10))
	}
	s.render(rq, http.StatusOK, "audit", "Audit trail of "+name, p, "")
}

type gcPage struct {
	db.StorageSummary
	Recent []db.GCChange
	Quotas []db.Quota
}

// recentCollections is how many of garbage collection's latest changes
// the page lists.
const recentCollections = 50

func (s *Server) gc(rq *request) {
	if s.backend.AuthEnabled() && !rq.viewer.WholeRegistry {
		s.forbidden(rq)
		return
	}
	sum, err := s.db.StorageSummaryGet(rq.r.Context())
	if err != nil {
		s.fail(rq, err)
		return
	}
	recent, err := s.db.GCRecent(rq.r.Context(), recentCollections)
	if err != nil {
		s.fail(rq, err)
		return
	}
	quotas, err := s.db.QuotaList(rq.r.Context())
	if err != nil {
		s.fail(rq, err)
		return
	}
	s.render(rq, http.StatusOK, "gc", "Garbage collection", gcPage{StorageSummary: sum, Recent: recent, Quotas: quotas}, "")
}

// confirmPage asks before a change; posted, it makes the change.
type confirmPage struct {
	Question string // the page's h1
	Explain  string // exactly what will happen
	Button   string
	Action   string // where the form posts
	Cancel   string
	Digest   string // hidden field of a restore
}

func (s *Server) untag(rq *request, name, tag string) {
	if !names.ValidTag(tag) {
		s.notFound(rq)
		return
	}
	c := confirmPage{Question: "Untag " + tag + " of " + name + "?", Button: "Untag " + tag,
		Action: repoPath(name, "untag", tag), Cancel: repoPath(name)}
	c.Explain = "Untag " + tag + " of " + name + ": only this tag is removed."
	if m, err := s.db.ManifestByTag(rq.r.Context(), name, tag, false); err == nil {
		others := "none"
		if d, err := s.db.ManifestDetailGet(rq.r.Context(), name, m.Digest); err == nil {
			if o := slices.DeleteFunc(d.Tags, func(t string) bool { return t == tag }); len(o) > 0 {
				others = strings.Join(o, ", ")
			}
		}
		c.Explain = strings.TrimSuffix(c.Explain, ".") + "; manifest " + m.Digest + " stays, pullable by digest, with its other tags " + others + "."
	}
	s.confirm(rq, name, "delete", c, func() (string, error) {
		err := s.backend.Untag(rq.r, name, tag)
		return repoPath(name) + "?" + url.Values{"done": {"untag"}, "tag": {tag}}.Encode(), err
	})
}

func (s *Server) deleteManifest(rq *request, name, ref string) {
	dgst, err := digests.Parse(ref)
	if err != nil {
		s.notFound(rq)
		return
	}
	c := confirmPage{Question: "Delete manifest " + dgst.String() + " of " + name + "?", Button: "Delete manifest " + dgst.String(),
		Action: repoPath(name, "delete", dgst.String()), Cancel: repoPath(name, "manifests", dgst.String())}
	var tags []string
	if d, err := s.db.ManifestDetailGet(rq.r.Context(), name, dgst.String()); err == nil {
		tags = d.Tags
		c.Explain = "The manifest is deleted, with the tags that point at it: "
		if len(tags) == 0 {
			c.Explain += "none."
		} else {
			c.Explain += strings.Join(tags, ", ") + "."
		}
		c.Explain += " It stays restorable from a tag's history until garbage collection purges it."
		if len(d.ListedBy) > 0 {
			c.Explain += " It cannot be deleted now: index " + strings.Join(d.ListedBy, ", ") + " lists it; delete the index first."
		}
	}
	s.confirm(rq, name, "delete", c, func() (string, error) {
		err := s.backend.DeleteManifest(rq.r, name, dgst.String())
		return repoPath(name) + "?" + url.Values{"done": {"delete"}, "digest": {dgst.String()}, "tags": tags}.Encode(), err
	})
}

func (s *Server) restore(rq *request, name, tag string) {
	if !names.ValidTag(tag) {
		s.notFound(rq)
		return
	}
	raw := rq.r.FormValue("digest")
	dgst, err := digests.Parse(raw)
	if err != nil {
		s.render(rq, http.StatusBadRequest, "error", "Bad request", nil, "a restore needs the digest to point the tag at: "+clipSearch(raw))
		return
	}
	current := "no manifest: the tag does not exist"
	if m, err := s.db.ManifestByTag(rq.r.Context(), name, tag, false); err == nil {
		current = m.Digest
	}
	c := confirmPage{Question: "Restore " + tag + " of " + name + "?", Button: "Restore " + tag,
		Explain: "Restore " + tag + " to " + dgst.String() + " (now " + current + "). A deleted manifest not yet purged is restored with it.",
		Action:  repoPath(name, "restore", tag), Cancel: repoPath(name, "history", tag), Digest: dgst.String()}
	s.confirm(rq, name, "push", c, func() (string, error) {
		err := s.backend.RestoreTag(rq.r, name, tag, dgst.String())
		return repoPath(name, "history", tag) + "?" + url.Values{"done": {"restore"}, "tag": {tag}, "digest": {dgst.String()}}.Encode(), err
	})
}

// confirm shows the question on GET; on POST it makes the change and
// redirects (303) to the page that shows it, or shows the question again
// with the API's refusal, with the API's status.
func (s *Server) confirm(rq *request, repo, need string, c confirmPage, change func() (string, error)) {
	if !rq.may(s, repo, need) {
		s.render(rq, http.StatusForbidden, "confirm", c.Question, c, denied)
		return
	}
	if rq.r.Method != http.MethodPost {
		s.render(rq, http.StatusOK, "confirm", c.Question, c, "")
		return
	}
	to, err := change()
	if err != nil {
		status, msg := s.backend.Explain(rq.r, err)
		if status == 0 {
			return
		}
		s.render(rq, status, "confirm", c.Question, c, msg)
		return
	}
	rq.redirect(to)
}

type loginPage struct {
	Next string
	User string
}

func (s *Server) login(rq *request) {
	if !s.backend.AuthEnabled() {
		s.render(rq, http.StatusNotFound, "error", "Not Found", nil, "this registry has no logins: authentication is off (--auth none)")
		return
	}
	next := rq.r.FormValue("next")
	if !strings.HasPrefix(next, Prefix+"/") || strings.HasPrefix(next, Prefix+"/login") {
		next = Prefix + "/" // only a page of the interface: no open redirect
	}
	if rq.r.Method != http.MethodPost {
		s.render(rq, http.StatusOK, "login", "Log in", loginPage{Next: next}, "")
		return
	}
	user := rq.r.PostFormValue("username")
	session, err := s.backend.Login(rq.r, user, rq.r.PostFormValue("password"))
	if err != nil {
		status, msg := s.backend.Explain(rq.r, err)
		if status == 0 {
			return
		}
		s.render(rq, status, "login", "Log in", loginPage{Next: next, User: user}, msg)
		return
	}
	s.setCookie(rq.w, rq.r, sessionCookie, session, s.ttl)
	rq.redirect(next)
}

func (s *Server) logout(rq *request) {
	s.setCookie(rq.w, rq.r, sessionCookie, "", -1)
	rq.redirect(Prefix + "/?done=logout")
}
