package process

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/api/types"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
)

func TestMountRootfs(t *testing.T) {
	testutil.RequiresRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	target := filepath.Join(dir, "bundle", "rootfs")
	for _, d := range []string{src, target} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "marker"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("read-only bind", func(t *testing.T) {
		if err := MountRootfs([]*types.Mount{{Type: "bind", Source: src, Options: []string{"rbind", "ro"}}}, target); err != nil {
			t.Fatal(err)
		}
		defer UnmountAll(target)
		if _, err := os.Stat(filepath.Join(target, "marker")); err != nil {
			t.Fatalf("bind mount not visible: %v", err)
		}
		err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644)
		if !errors.Is(err, unix.EROFS) {
			t.Fatalf("write to a read-only rootfs: %v, want EROFS", err)
		}
		if err := UnmountAll(target); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(target, "marker")); !os.IsNotExist(err) {
			t.Fatalf("still mounted after UnmountAll: %v", err)
		}
	})
	t.Run("overlay", func(t *testing.T) {
		upper, work := filepath.Join(dir, "upper"), filepath.Join(dir, "work")
		for _, d := range []string{upper, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		m := &types.Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + src, "upperdir=" + upper, "workdir=" + work}}
		if err := MountRootfs([]*types.Mount{m}, target); err != nil {
			t.Skipf("overlay not available here: %v", err)
		}
		defer UnmountAll(target)
		if err := os.WriteFile(filepath.Join(target, "new"), []byte("y"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(upper, "new")); err != nil {
			t.Fatalf("write did not reach the upper dir: %v", err)
		}
	})
	t.Run("bad mount undoes nothing left", func(t *testing.T) {
		err := MountRootfs([]*types.Mount{{Type: "bind", Source: src, Options: []string{"rbind"}}, {Type: "nosuchfs", Source: "x"}}, target)
		if err == nil {
			t.Fatal("mount of an unknown filesystem succeeded")
		}
		if _, err := os.Stat(filepath.Join(target, "marker")); !os.IsNotExist(err) {
			t.Fatalf("first mount left after a failure: %v", err)
		}
	})
	if err := UnmountAll(filepath.Join(dir, "nonexistent")); err != nil {
		t.Fatalf("UnmountAll of a missing target: %v", err)
	}
}
