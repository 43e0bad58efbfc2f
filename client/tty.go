package client

import (
	"context"
	"os"
	"os/signal"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// ForwardResize sends the size of con to the process now and on every
// SIGWINCH, until ctx ends. It returns at once; the forwarding goroutine
// is owned by ctx. Errors of single resizes are given to onErr (may be nil):
// a resize that races the process's exit is harmless.
func (s *Shim) ForwardResize(ctx context.Context, con console.Console, id, execID string, onErr func(error)) {
	resize := func() {
		sz, err := con.Size()
		if err == nil {
			err = s.ResizePty(ctx, id, execID, uint32(sz.Width), uint32(sz.Height))
		}
		if err != nil && onErr != nil && ctx.Err() == nil {
			onErr(err)
		}
	}
	resize()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, unix.SIGWINCH)
	go func() {
		defer signal.Stop(winch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-winch:
				resize()
			}
		}
	}()
}
