// Package testutil holds what the root-gated tests share: the root check,
// the location of the built binaries, and a busybox root filesystem built
// from Debian's busybox-static package (never pulled from a registry).
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// RequiresRoot skips t unless the test runs as root. Integration tests that
// start runc, containerd, Podman or journald call it first.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("requires root")
	}
}

// RepoRoot returns the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Bin returns the path of a binary built by `make build` into bin/, and
// fails t if it is missing. CONMON_V2_BIN overrides the directory.
func Bin(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("CONMON_V2_BIN")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), "bin")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not built (run make build): %v", p, err)
	}
	return p
}

// NeedCommand fails t when a program the test needs is not installed; .ci/run
// installs them all, so a missing one is a setup error, not a skip.
func NeedCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (.ci/run installs it): %v", name, err)
	}
	return p
}

var rootfsMu sync.Mutex

// BusyboxRootfs builds (once per directory) a minimal root filesystem with
// Debian's static busybox and its applet links, and returns its path.
func BusyboxRootfs(t testing.TB, dir string) string {
	t.Helper()
	rootfsMu.Lock()
	defer rootfsMu.Unlock()
	if err := MakeBusyboxRootfs(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// MakeBusyboxRootfs writes a busybox root filesystem into dir.
func MakeBusyboxRootfs(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "bin", "sh")); err == nil {
		return nil
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return fmt.Errorf("busybox not installed (apt-get install busybox-static): %w", err)
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var/log", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	out, err := exec.Command(filepath.Join(dir, "bin", "busybox"), "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, name := range splitLines(string(out)) {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", link); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":       "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":       "127.0.0.1 localhost\n",
		"etc/resolv.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// WriteFile writes content to path with mode, failing the test on error.
func WriteFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
