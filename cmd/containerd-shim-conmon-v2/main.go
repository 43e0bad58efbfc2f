// Command containerd-shim-conmon-v2 is the binary containerd runs for
// conmon-v2 (runtime io.containerd.conmon.v2), and CRI-O's "vm" runtime
// handler too. It is a launcher. containerd runs `start` once for every
// container and waits for it, so `start` is served here, by a small
// program that joins the daemon of the container's group or spawns one
// (package launch). Everything else (delete, -info, -v, the daemon
// itself) is the daemon binary, containerd-shim-conmon-v2-daemon,
// installed beside this one and exec'd in its place with the same
// arguments. Why: docs/design.md §1.6.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/shim/launch"
)

func main() {
	self, err := os.Executable()
	if err != nil {
		fail(err)
	}
	daemon := filepath.Join(filepath.Dir(self), launch.DaemonBinary)
	f, err := launch.ParseFlags(os.Args[1:])
	if err == nil && f.Action == launch.ActionStart && !f.Version && !f.Info {
		env := launch.StartEnv{Stdin: os.Stdin, Stdout: os.Stdout, Self: daemon, Name: os.Args[0]}
		if err := launch.Start(context.Background(), f, env); err != nil {
			fail(err)
		}
		return
	}
	// A bad command line too: the daemon binary reports it as it always has.
	err = unix.Exec(daemon, os.Args, os.Environ())
	fail(fmt.Errorf("run the shim daemon %s (installed beside this launcher): %w", daemon, err))
}

// fail reports err on stderr (containerd shows it as the start error) and
// exits non-zero.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "containerd-shim-conmon-v2: %v\n", err)
	os.Exit(1)
}
