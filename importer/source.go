package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/berth-registry/berth/blobstore"
)

// The reference registry's storage layout, under its root directory (the
// filesystem driver's rootdirectory, or the S3 driver's prefix):
//
//	docker/registry/v2/blobs/<alg>/<2 hex>/<hex>/data                   the bytes of every blob and manifest
//	docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link     a blob linked into the repository
//	.../<name>/_manifests/revisions/<alg>/<hex>/link                   a manifest of the repository (tagged or not)
//	.../<name>/_manifests/tags/<tag>/current/link                      the digest the tag points at
//	.../<name>/_manifests/tags/<tag>/index/<alg>/<hex>/link            every digest the tag pointed at; the mtime is when
//	.../<name>/_uploads/...                                            uploads in progress (ignored)
//
// A deleted manifest leaves its revision directory without the link file
// (and, in v3, its tags are removed); a deleted tag is its whole directory
// removed, index included. Blob data is removed only by the registry's
// garbage collector, so links may point at data that is gone ("dangling").
const treeRoot = "docker/registry/v2/"

// ErrNotFound is a link or blob the source does not have.
var ErrNotFound = errors.New("not in the source")

// Source is a reference registry's storage tree.
type Source interface {
	// Kind is "filesystem" or "s3": with Berth's store of the same kind,
	// blobs are hard-linked or copied on the server.
	Kind() string
	String() string
	// Scan lists every repository with its link files.
	Scan(ctx context.Context) ([]*Repository, error)
	// ReadLink returns the digest a link file of repo holds (rel is its
	// path under the repository's directory).
	ReadLink(ctx context.Context, repo, rel string) (string, error)
	// BlobSize returns the size of a blob's data; ErrNotFound when the
	// data is gone.
	BlobSize(ctx context.Context, dgst digest.Digest) (int64, error)
	// OpenBlob returns a blob's data.
	OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error)
}

// Repository is what a scan found of one repository.
type Repository struct {
	Name      string
	Layers    []digest.Digest // _layers links
	Revisions []digest.Digest // revision links (live manifests)
	Tags      map[string]*Tag
	// Bad are link files whose path does not parse (reported as skipped).
	Bad []string
}

// Tag is one tag's directory.
type Tag struct {
	HasCurrent bool
	// Version identifies the content of the current link where the source
	// can tell without reading it (an S3 ETag); empty otherwise. A reader
	// that has read the link at this version need not read it again.
	Version string
	// Index is every digest the tag pointed at, oldest first (by the link
	// files' modification times, the only dates the tree has).
	Index []IndexEntry
}

// IndexEntry is one link of a tag's index.
type IndexEntry struct {
	Digest digest.Digest
	At     time.Time
}

// add records the file at rel (under the repository's directory).
func (r *Repository) add(rel string, mtime time.Time) {
	parts := strings.Split(rel, "/")
	linkDigest := func(p []string) (digest.Digest, bool) {
		// <alg>/<hex>/link
		if len(p) != 3 || p[2] != "link" {
			return "", false
		}
		d := digest.NewDigestFromEncoded(digest.Algorithm(p[0]), p[1])
		return d, d.Validate() == nil
	}
	bad := func() { r.Bad = append(r.Bad, rel) }
	switch {
	case parts[0] == "_uploads":
	case parts[0] == "_layers":
		if d, ok := linkDigest(parts[1:]); ok {
			r.Layers = append(r.Layers, d)
		} else {
			bad()
		}
	case parts[0] == "_manifests" && len(parts) > 1 && parts[1] == "revisions":
		if d, ok := linkDigest(parts[2:]); ok {
			r.Revisions = append(r.Revisions, d)
		} else {
			bad()
		}
	case parts[0] == "_manifests" && len(parts) > 3 && parts[1] == "tags":
		name := parts[2]
		t := r.Tags[name]
		if t == nil {
			t = &Tag{}
			r.Tags[name] = t
		}
		switch {
		case len(parts) == 5 && parts[3] == "current" && parts[4] == "link":
			t.HasCurrent = true
		case parts[3] == "index":
			if d, ok := linkDigest(parts[4:]); ok {
				t.Index = append(t.Index, IndexEntry{Digest: d, At: mtime})
			} else {
				bad()
			}
		default:
			bad()
		}
	default:
		bad()
	}
}

// finish sorts what add collected.
func (r *Repository) finish() {
	slices.Sort(r.Layers)
	slices.Sort(r.Revisions)
	for _, t := range r.Tags {
		slices.SortFunc(t.Index, func(a, b IndexEntry) int {
			if c := a.At.Compare(b.At); c != 0 {
				return c
			}
			return strings.Compare(string(a.Digest), string(b.Digest))
		})
	}
}

// splitRepo cuts a path under repositories/ into the repository name and
// the path under the repository's directory, at the first component that
// names one of the repository's own directories.
func splitRepo(p string) (repo, rel string, ok bool) {
	parts := strings.Split(p, "/")
	for i, c := range parts {
		if i > 0 && (c == "_manifests" || c == "_layers" || c == "_uploads") {
			return strings.Join(parts[:i], "/"), strings.Join(parts[i:], "/"), true
		}
	}
	return "", "", false
}

// collect groups the files of a scan by repository.
type collect map[string]*Repository

func (c collect) add(p string, mtime time.Time) {
	repo, rel, ok := splitRepo(p)
	if !ok {
		return
	}
	r := c[repo]
	if r == nil {
		r = &Repository{Name: repo, Tags: map[string]*Tag{}}
		c[repo] = r
	}
	r.add(rel, mtime)
}

func (c collect) list() []*Repository {
	out := make([]*Repository, 0, len(c))
	for _, r := range c {
		r.finish()
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *Repository) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// parseLink reads the digest a link file holds.
func parseLink(b []byte) (string, error) {
	d := digest.Digest(strings.TrimSpace(string(b)))
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("link holds %q, not a digest", strings.TrimSpace(string(b)))
	}
	return string(d), nil
}

// DirSource is the tree of the reference registry's filesystem driver.
type DirSource struct {
	root string // the rootdirectory
}

// NewDirSource returns the tree under dir, the registry's rootdirectory.
func NewDirSource(dir string) (*DirSource, error) {
	if _, err := os.Stat(filepath.Join(dir, treeRoot)); err != nil {
		return nil, fmt.Errorf("%s is not a reference registry's rootdirectory (no %s in it): %w", dir, treeRoot, err)
	}
	return &DirSource{root: dir}, nil
}

func (s *DirSource) Kind() string   { return "filesystem" }
func (s *DirSource) String() string { return s.root }

// Scan implements Source: one walk of repositories/.
func (s *DirSource) Scan(ctx context.Context) ([]*Repository, error) {
	base := filepath.Join(s.root, treeRoot, "repositories")
	c := collect{}
	err := filepath.WalkDir(base, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walk (a tag deleted, an upload done)
			}
			return err
		}
		if e.IsDir() {
			if e.Name() == "_uploads" {
				return filepath.SkipDir
			}
			return ctx.Err()
		}
		rel, _ := filepath.Rel(base, p)
		rel = filepath.ToSlash(rel)
		// Only a tag's index links need their time: a stat for them
		// alone (a tenth of the files of a large tree).
		var mtime time.Time
		if strings.Contains(rel, "/index/") {
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			mtime = info.ModTime()
		}
		c.add(rel, mtime)
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", base, err)
	}
	return c.list(), nil
}

// ReadLink implements Source.
func (s *DirSource) ReadLink(ctx context.Context, repo, rel string) (string, error) {
	b, err := os.ReadFile(filepath.Join(s.root, treeRoot, "repositories", filepath.FromSlash(repo), filepath.FromSlash(rel)))
	if errors.Is(err, fs.ErrNotExist) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", err
	}
	return parseLink(b)
}

// BlobPath is the file of a blob's data.
func (s *DirSource) BlobPath(dgst digest.Digest) string {
	enc := dgst.Encoded()
	return filepath.Join(s.root, treeRoot, "blobs", string(dgst.Algorithm()), enc[:2], enc, "data")
}

// BlobSize implements Source.
func (s *DirSource) BlobSize(ctx context.Context, dgst digest.Digest) (int64, error) {
	fi, err := os.Stat(s.BlobPath(dgst))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// OpenBlob implements Source.
func (s *DirSource) OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	f, err := os.Open(s.BlobPath(dgst))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	return f, err
}

// S3Source is the same tree in a bucket, under the S3 driver's
// rootdirectory (a key prefix).
type S3Source struct {
	bucket *blobstore.S3 // used for its bucket only, not as a blob store
	prefix string        // ends with treeRoot
}

// NewS3Source reads the tree under prefix (the registry's rootdirectory,
// possibly empty) of the bucket bucket opens.
func NewS3Source(bucket *blobstore.S3, prefix string) *S3Source {
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &S3Source{bucket: bucket, prefix: prefix + treeRoot}
}

func (s *S3Source) Kind() string   { return "s3" }
func (s *S3Source) String() string { return "s3://" + s.bucket.Bucket() + "/" + s.prefix }

// Scan implements Source: one listing of repositories/.
func (s *S3Source) Scan(ctx context.Context) ([]*Repository, error) {
	base := s.prefix + "repositories/"
	c := collect{}
	err := s.bucket.ListKeys(ctx, base, func(k blobstore.KeyInfo) error {
		rel := strings.TrimPrefix(k.Key, base)
		c.add(rel, k.ModTime)
		if strings.HasSuffix(rel, "/current/link") {
			if repo, tagRel, ok := splitRepo(rel); ok {
				if t := c[repo].Tags[strings.TrimSuffix(strings.TrimPrefix(tagRel, "_manifests/tags/"), "/current/link")]; t != nil {
					t.Version = k.ETag
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", s, err)
	}
	return c.list(), nil
}

// ReadLink implements Source.
func (s *S3Source) ReadLink(ctx context.Context, repo, rel string) (string, error) {
	body, _, err := s.bucket.GetKey(ctx, s.prefix+"repositories/"+repo+"/"+rel)
	if errors.Is(err, blobstore.ErrNotFound) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", err
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 1024))
	if err != nil {
		return "", err
	}
	return parseLink(b)
}

// BlobKey is the key of a blob's data, and Bucket the bucket.
func (s *S3Source) BlobKey(dgst digest.Digest) string {
	enc := dgst.Encoded()
	return path.Join(s.prefix+"blobs", string(dgst.Algorithm()), enc[:2], enc, "data")
}

func (s *S3Source) Bucket() string { return s.bucket.Bucket() }

// BlobSize implements Source.
func (s *S3Source) BlobSize(ctx context.Context, dgst digest.Digest) (int64, error) {
	n, err := s.bucket.HeadKey(ctx, s.BlobKey(dgst))
	if errors.Is(err, blobstore.ErrNotFound) {
		return 0, ErrNotFound
	}
	return n, err
}

// OpenBlob implements Source.
func (s *S3Source) OpenBlob(ctx context.Context, dgst digest.Digest) (io.ReadCloser, error) {
	body, _, err := s.bucket.GetKey(ctx, s.BlobKey(dgst))
	if errors.Is(err, blobstore.ErrNotFound) {
		return nil, ErrNotFound
	}
	return body, err
}
