package auth

import (
	"errors"

	"golang.org/x/crypto/bcrypt"
)

// Password errors, so that the CLI can say exactly what is wrong.
var (
	ErrEmptyPassword   = errors.New("empty password")
	ErrPasswordTooLong = errors.New("password longer than 72 bytes (bcrypt uses only the first 72)")
)

// maxPasswordBytes is bcrypt's limit: it ignores every byte past the 72nd,
// so a longer password would be stored weaker than its owner thinks.
const maxPasswordBytes = 72

// HashPassword returns the bcrypt hash of pw at bcrypt.DefaultCost.
// Passwords are chosen by people and may be weak, so they get a slow,
// salted hash; bcrypt because htpasswd files (the reference registry's user
// store, which Berth imports) use it, so imported hashes work unchanged.
func HashPassword(pw string) (string, error) {
	switch {
	case pw == "":
		return "", ErrEmptyPassword
	case len(pw) > maxPasswordBytes:
		return "", ErrPasswordTooLong
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		return "", err
	}
	return string(h), nil
}

// CheckPassword reports whether pw matches the bcrypt hash. It compares as
// bcrypt and Apache's htpasswd do (bytes past the 72nd do not count), so
// that users imported from an htpasswd file keep their passwords. An empty
// password never matches. A malformed hash costs a dummy check, so that it
// cannot be told apart by timing.
func CheckPassword(hash, pw string) bool {
	if _, err := bcrypt.Cost([]byte(hash)); err != nil {
		DummyPasswordCheck(pw)
		return false
	}
	ok := bcrypt.CompareHashAndPassword([]byte(hash), []byte(pw)) == nil
	return ok && pw != ""
}

// dummyHash is a bcrypt hash at DefaultCost (10) of a random password
// nobody knows. It is a constant, not computed at start, so that the package
// has no state and no start-up cost.
const dummyHash = "$2a$10$AECWb4SjvgIb3snoySZaP.HG3ExmOQWj5eLIdd1pw9OoLvRtHzjY2"

// DummyPasswordCheck costs what CheckPassword costs on a DefaultCost hash.
// Call it when the user does not exist, so that the time a failed login
// takes does not tell whether the user exists.
func DummyPasswordCheck(pw string) {
	_ = bcrypt.CompareHashAndPassword([]byte(dummyHash), []byte(pw))
}
