//go:build !unix

package blobstore

// fsFull never recognises a full disk where the store is not tested (no
// Unix errno to go by): the error stays a plain one, as before.
func fsFull(err error) bool { return false }
