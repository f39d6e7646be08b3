//go:build unix && !linux

package pgembed

import "syscall"

// sysProcAttr runs a child as cred (nil: as ourselves). Only Linux has a
// parent-death signal; elsewhere a postgres outliving a killed berth is
// stopped by the next Start (see clearLeftover).
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}
