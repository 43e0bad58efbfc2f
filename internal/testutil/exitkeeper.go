package testutil

import (
	"net"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// StartExitKeeper starts `bin --exit-keeper sock` (the conmon drop-in's
// node-wide exit keeper) and returns once it accepts connections, with
// its pid and its output. The keeper is stopped (SIGTERM) at the test's
// end and its output logged.
func StartExitKeeper(t *testing.T, bin, sock string) (int, *SyncBuffer) {
	t.Helper()
	cmd := exec.Command(bin, "--exit-keeper", sock)
	out := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		_ = cmd.Wait()
		t.Logf("keeper log:\n%s", out.String())
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unixpacket", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keeper never listened: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd.Process.Pid, out
}
