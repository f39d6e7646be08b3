package pgembed

import "syscall"

// sysProcAttr runs a child as cred (nil: as ourselves) and has the kernel
// send it SIGTERM if berth dies without stopping it (e.g. SIGKILL or OOM
// kill), so no orphaned postgres keeps the data directory locked; SIGTERM is
// a smart shutdown, which completes at once since the dead berth's sessions
// are gone. Go sets the parent-death signal after switching user, since a
// credential change would otherwise clear it. See startLocked for the
// thread caveat.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGTERM}
}
