package process

import (
	"os"
	"path/filepath"
	"testing"
)

// TestOOMCount: the count written beside a task's record reads back; a
// task whose state directory is gone (deleted meanwhile) gets no file and
// no directory; a missing or malformed file is no count.
func TestOOMCount(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "a"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range []uint64{1, 7} {
		if err := WriteOOMCount(dir, "a", n); err != nil {
			t.Fatal(err)
		}
		if got, ok := ReadOOMCount(dir, "a"); !ok || got != n {
			t.Fatalf("after writing %d: %d, %v", n, got, ok)
		}
	}
	if err := WriteOOMCount(dir, "gone", 3); err != nil {
		t.Fatalf("a deleted task's count: %v, want it skipped", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "gone")); !os.IsNotExist(err) {
		t.Fatalf("the deleted task's directory was made again (%v)", err)
	}
	if _, ok := ReadOOMCount(dir, "gone"); ok {
		t.Fatal("a count for a task without one")
	}
	if err := os.WriteFile(filepath.Join(dir, "a", OOMCountFile), []byte("many"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok := ReadOOMCount(dir, "a"); ok {
		t.Fatal("a malformed count was taken")
	}
}
