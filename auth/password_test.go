package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func TestHashPassword(t *testing.T) {
	t.Parallel()
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if cost, err := bcrypt.Cost([]byte(h)); err != nil || cost != bcrypt.DefaultCost {
		t.Fatalf("cost %d, %v; want %d", cost, err, bcrypt.DefaultCost)
	}
	tests := []struct {
		pw   string
		want bool
	}{
		{"correct horse", true},
		{"correct horsE", false},
		{"correct horse ", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := CheckPassword(h, tt.pw); got != tt.want {
			t.Errorf("CheckPassword(%q) = %v, want %v", tt.pw, got, tt.want)
		}
	}
	if CheckPassword("not a hash", "correct horse") {
		t.Error("a malformed hash matched")
	}
}

func TestHashPasswordRefuses(t *testing.T) {
	t.Parallel()
	if _, err := HashPassword(""); !errors.Is(err, ErrEmptyPassword) {
		t.Errorf("empty: %v", err)
	}
	if _, err := HashPassword(strings.Repeat("x", 73)); !errors.Is(err, ErrPasswordTooLong) {
		t.Errorf("73 bytes: %v", err)
	}
	if _, err := HashPassword(strings.Repeat("x", 72)); err != nil {
		t.Errorf("72 bytes: %v", err)
	}
}

func TestDummyHashIsDefaultCost(t *testing.T) {
	t.Parallel()
	if cost, err := bcrypt.Cost([]byte(dummyHash)); err != nil || cost != bcrypt.DefaultCost {
		t.Fatalf("dummy hash cost %d, %v; want %d", cost, err, bcrypt.DefaultCost)
	}
}

// TestDummyPasswordCheckCost: the check for an unknown user takes about as
// long as a real one. Loose bounds, as the machine is shared; the point is
// that it is a bcrypt of the same cost, not a no-op.
func TestDummyPasswordCheckCost(t *testing.T) {
	t.Parallel()
	h, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	measure := func(f func()) time.Duration {
		best := time.Hour
		for range 3 {
			start := time.Now()
			f()
			best = min(best, time.Since(start))
		}
		return best
	}
	real := measure(func() { CheckPassword(h, "wrong") })
	dummy := measure(func() { DummyPasswordCheck("wrong") })
	if dummy < real/3 || dummy > real*3 {
		t.Fatalf("dummy check %v, real check %v", dummy, real)
	}
}
