//go:build unix

package blobstore

import (
	"errors"
	"syscall"
)

// fsFull reports whether err is the filesystem saying it has no room:
// ENOSPC (no free blocks, or no free inodes, which creating a file, a
// directory or, on tmpfs, a link needs) or EDQUOT (a user, group or
// project quota; XFS reports a project quota as ENOSPC).
func fsFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
