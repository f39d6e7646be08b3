package db_test

import (
	"context"
	"encoding/json"
	"maps"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/berth-registry/berth/db"
	"github.com/berth-registry/berth/db/dbtest"
)

// annotationCases are annotations at the edges of JSON strings.
var annotationCases = []map[string]string{
	nil,
	{},
	{"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "a": ""},
	{`quote"`: `back\slash`, "ctl\x01\x1f\t\n\r": "\x7f", "<html>&": "\u2028\u2029", "": "empty key"},
	{"é": "日本語", "emoji": "🐳", "bad utf-8": "a\xffb\xc3", "\xe2\x82": "cut"},
	{strings.Repeat("k", 1000): strings.Repeat("v\"", 5000)},
}

// What encodeAnnotations writes decodes to the same strings as what
// json.Marshal wrote, has the length it was given, and PostgreSQL reads it
// as the same jsonb.
func TestEncodeAnnotations(t *testing.T) {
	t.Parallel()
	conn, err := pgx.Connect(context.Background(), dbtest.NewURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for i, m := range annotationCases {
		got := db.EncodeAnnotations(m)
		if m == nil {
			if got != nil {
				t.Errorf("encodeAnnotations(nil) = %q, want nil", got)
			}
			continue
		}
		if len(got) != cap(got) {
			t.Errorf("case %d: %d bytes in a buffer of %d", i, len(got), cap(got))
		}
		want, _ := json.Marshal(m)
		var back, wantBack map[string]string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("case %d: %.300s: %v", i, got, err)
		}
		json.Unmarshal(want, &wantBack)
		if !maps.Equal(back, wantBack) {
			t.Errorf("case %d: %.300q decodes to %.300q, json.Marshal's to %.300q", i, got, back, wantBack)
		}
		var same bool
		if err := conn.QueryRow(context.Background(), `SELECT $1::jsonb = $2::jsonb`, string(got), string(want)).Scan(&same); err != nil || !same {
			t.Errorf("case %d: PostgreSQL reads %.300s as another jsonb than %.300s (%v)", i, got, want, err)
		}
	}
}
