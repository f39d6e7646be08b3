package auth

import (
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func TestParseHtpasswd(t *testing.T) {
	t.Parallel()
	// Hashes of "baggins" and "새주" made by Apache's htpasswd -B ($2y$),
	// from the reference registry's tests; $2a$ (Go, older systems) and $2b$
	// (OpenBSD) are the same algorithm under other names.
	const (
		bcryptY  = "$2y$05$926C3y10Quzn/LnqQH86VOEVh/18T6RnLaS.khre96jLNL/7e.K5W"
		bcryptA  = "$2a$05$926C3y10Quzn/LnqQH86VOEVh/18T6RnLaS.khre96jLNL/7e.K5W"
		bcryptB  = "$2b$05$926C3y10Quzn/LnqQH86VOEVh/18T6RnLaS.khre96jLNL/7e.K5W"
		bcryptY2 = "$2y$05$0oHgwMehvoe8iAWS8I.7l.KoECXrwVaC16RPfaSCU5eVTFrATuMI2"
	)
	file := strings.Join([]string{
		"# users of the old registry",
		"alice:" + bcryptY,
		"",
		"bob:" + bcryptA + "\r",
		"  carol:" + bcryptB + "  ",
		"dave:$apr1$aaaaaaaa$abcdefghijklmnopqrstuv",
		"erin:{SHA}qvTGHdzF6KLavt4PO0gs2a6pQ00=",
		"frank:$6$salt$hash",
		"grace:abJnggxhB/yWI",
		"heidi:plaintext",
		"nocolon",
		"alice:" + bcryptA,
		"bad user:" + bcryptA,
		"ivan:$2y$05$short",
		"judy:",
		"MiShil:" + bcryptY2,
	}, "\n")
	entries, refused, err := ParseHtpasswd(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	wantEntries := []HtpasswdEntry{{"alice", bcryptY}, {"bob", bcryptA}, {"carol", bcryptB}, {"MiShil", bcryptY2}}
	if !reflect.DeepEqual(entries, wantEntries) {
		t.Errorf("entries = %q, want %q", entries, wantEntries)
	}
	wantRefused := []string{
		`line 6: user "dave": MD5 ($apr1$) hash refused`,
		`line 7: user "erin": SHA-1 ({SHA}) hash refused`,
		`line 8: user "frank": crypt(3) ($6$) hash refused`,
		`line 9: user "grace": crypt or plain-text password refused`,
		`line 10: user "heidi": crypt or plain-text password refused`,
		`line 11: no ':'`,
		`line 12: user "alice": already on line 2`,
		`line 13: user "bad user": invalid user name`,
		`line 14: user "ivan": malformed bcrypt hash`,
		`line 15: user "judy": empty hash refused`,
	}
	if len(refused) != len(wantRefused) {
		t.Fatalf("refused:\n%s", strings.Join(refused, "\n"))
	}
	for i, w := range wantRefused {
		if !strings.HasPrefix(refused[i], w) {
			t.Errorf("refused[%d] = %q, want it to start with %q", i, refused[i], w)
		}
	}
	passwords := map[string]string{"alice": "baggins", "bob": "baggins", "carol": "baggins", "MiShil": "새주"}
	for _, e := range entries {
		if !CheckPassword(e.Hash, passwords[e.User]) || CheckPassword(e.Hash, "wrong") {
			t.Errorf("%s: the imported hash does not check", e.User)
		}
	}
}

func TestParseHtpasswdReadError(t *testing.T) {
	t.Parallel()
	if _, _, err := ParseHtpasswd(iotest.ErrReader(iotest.ErrTimeout)); err == nil {
		t.Fatal("no error")
	}
}
