//go:build !unix

package blobstore

import (
	"errors"
	"os"
)

// tryLock never succeeds where flock does not exist: every chunk then goes
// to a new file and Publish copies, which is slower but just as safe.
func tryLock(f *os.File) error { return errors.ErrUnsupported }
