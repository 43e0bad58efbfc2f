package testutil

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// JournaldSocket is the native socket of the default (unnamespaced)
// systemd-journald.
const JournaldSocket = "/run/systemd/journal/socket"

// Journald makes sure a systemd-journald answers on JournaldSocket,
// starting /lib/systemd/systemd-journald standalone when none does (PID 1
// is not systemd on CI machines). Idempotent: a running journald, this
// test's or another's, is reused; one started here is stopped at cleanup.
// It returns the socket path.
func Journald(t testing.TB) string {
	t.Helper()
	const bin = "/lib/systemd/systemd-journald"
	if journaldAlive() {
		return JournaldSocket
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s missing (install systemd): %v", bin, err)
	}
	cmd := exec.Command(bin)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for !journaldAlive() {
		if time.Now().After(deadline) {
			t.Fatal("systemd-journald did not open its socket within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return JournaldSocket
}

// journaldAlive reports whether a datagram reaches JournaldSocket.
func journaldAlive() bool {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return unix.Sendmsg(fd, nil, nil, &unix.SockaddrUnix{Name: JournaldSocket}, 0) == nil
}
