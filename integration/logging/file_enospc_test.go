package logging_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

// fileSmallTmpfs mounts a 64 KiB tmpfs for the test.
func fileSmallTmpfs(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestFileFullDisk fills a small tmpfs under k8s-file and json-file: the
// pipeline keeps going, counts what is lost, reports the error, writes
// again once space is freed, and leaves no torn line (podman#19943).
func TestFileFullDisk(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, tc := range []struct {
		name  string
		open  func(path string) (logging.Driver, error)
		parse func([]byte, *logging.Record) bool
	}{
		{"k8s-file", func(p string) (logging.Driver, error) {
			return k8sfile.New(k8sfile.Options{Path: p, MaxPending: 8 << 10})
		}, logging.ParseK8sLine},
		{"json-file", func(p string) (logging.Driver, error) {
			return jsonfile.New(jsonfile.Options{Path: p, MaxPending: 8 << 10})
		}, logging.ParseJSONLine},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := fileSmallTmpfs(t)
			filler := filepath.Join(mnt, "filler")
			if err := os.WriteFile(filler, make([]byte, 40<<10), 0o600); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(mnt, "ctr.log")
			d, err := tc.open(path)
			if err != nil {
				t.Fatal(err)
			}
			p := logging.NewPipeline(logging.Metadata{ID: "enospc"}, []logging.Driver{d}, logging.PipelineOptions{})
			// 4 MiB of output into about 24 KiB of free space.
			line := strings.Repeat("z", 90)
			for i := range 40000 {
				p.WriteChunk(logging.Stdout, fmt.Appendf(nil, "seq %06d %s\n", i, line))
			}
			st := p.Stats()
			ds := st.Drivers[0]
			if st.WriteError.Lines == 0 || ds.Lost.Lines == 0 {
				t.Fatalf("nothing counted lost on a full disk: %+v", st)
			}
			if !strings.Contains(ds.LastError, "no space") {
				t.Fatalf("last error %q", ds.LastError)
			}
			// Space comes back: what is held (at most MaxPending, less than
			// what is freed) and the next writes land.
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			p.WriteChunk(logging.Stdout, []byte("after recovery\n"))
			if err := p.Close(); err != nil {
				t.Fatalf("close after recovery: %v", err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
			var rec logging.Record
			for i, l := range lines {
				if !tc.parse(l, &rec) {
					t.Fatalf("line %d torn: %q", i, l)
				}
			}
			if !tc.parse(lines[len(lines)-1], &rec) || string(rec.Line) != "after recovery" {
				t.Fatalf("last line %q", lines[len(lines)-1])
			}
			st = p.Stats()
			written := uint64(len(lines))
			if written+st.Drivers[0].Lost.Lines != 40001 {
				t.Fatalf("%d lines in the file + %d lost != 40001 written", written, st.Drivers[0].Lost.Lines)
			}
			t.Logf("%d lines written, %d lost (%d bytes), error %q", written, st.Drivers[0].Lost.Lines, st.Drivers[0].Lost.Bytes, ds.LastError)
		})
	}
}
