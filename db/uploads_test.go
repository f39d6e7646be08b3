package db_test

import (
	"context"
	"testing"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Upload sessions record who opened them; changes record the API token
// they were made with.
func TestOwnersAndTokensRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := dbtest.NewURL(t)
	d, err := db.Open(ctx, url, db.Options{})
	mustDo(t, err)
	defer d.Close()
	actor := db.Actor{Name: "alice", RequestID: "r1", TokenID: "tok1"}
	mustDo(t, d.UploadCreate(ctx, "repo", "u1", "alice", []byte("state"), 0, actor))
	mustDo(t, d.UploadCreate(ctx, "repo", "u2", "", []byte("state"), 0, db.Actor{Name: "anon"}))
	u, err := d.UploadGet(ctx, "repo", "u1")
	mustDo(t, err)
	if u.Owner != "alice" {
		t.Errorf("owner %q", u.Owner)
	}
	u, err = d.UploadDelete(ctx, "repo", "u1", actor)
	mustDo(t, err)
	if u.Owner != "alice" {
		t.Errorf("owner of the deleted session %q", u.Owner)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM uploads WHERE id = 'u2' AND owner IS NULL`); n != 1 {
		t.Error("no owner is not stored as NULL")
	}
	expired, err := d.GCExpireUploads(ctx, 0, 10, false)
	mustDo(t, err)
	if len(expired) != 1 || expired[0].Owner != "" {
		t.Errorf("expired %+v", expired)
	}

	pushBareAs(t, d, "repo", digestM, actor, "v1")
	pushBareAs(t, d, "repo", digestN, db.Actor{Name: "bob"}, "v1")
	events, _, err := d.TagHistory(ctx, "repo", "v1", 0, 10)
	mustDo(t, err)
	if len(events) != 2 || events[0].TokenID != "" || events[1].TokenID != "tok1" {
		t.Errorf("history %+v", events)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE token_id = 'tok1'`); n != 4 {
		t.Errorf("%d audit rows with the token, want 4 (upload start, cancel, push, tag)", n)
	}
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE token_id = ''`); n != 0 {
		t.Errorf("%d audit rows with an empty token id rather than NULL", n)
	}
	// The removal of tags with their manifest, one statement for all
	// tags, records the token too.
	mustDo(t, d.ManifestDelete(ctx, "repo", digestN, db.Actor{Name: "carol", TokenID: "tok9"}))
	if n := dbtest.QueryInt(t, url, `SELECT count(*) FROM audit_log WHERE token_id = 'tok9' AND action = 'tag.delete'`); n != 1 {
		t.Errorf("%d tag.delete rows with the token", n)
	}
}

func pushBareAs(t *testing.T, d *db.DB, repo, dgst string, actor db.Actor, tags ...string) {
	t.Helper()
	_, err := d.ManifestStore(context.Background(), db.ManifestPut{Repository: repo, Digest: dgst,
		MediaType: "application/vnd.oci.image.index.v1+json", Payload: []byte(dgst), Tags: tags}, actor)
	mustDo(t, err)
}
