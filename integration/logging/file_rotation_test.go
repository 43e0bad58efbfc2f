package logging_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/builtin"
)

// TestFileRotationUnderLoadRealContainer runs a busybox container that
// prints 200000 numbered lines as fast as it can, through a Pipeline built
// from annotations (k8s-file rotating every 64 KiB), while a follower reads
// the log: the follower and a final read both see every number once, in
// order.
func TestFileRotationUnderLoadRealContainer(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	const total = 200000
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	base := t.TempDir()
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(base, "rootfs"))
	bundle := fileBundle(t, base, rootfs, fmt.Sprintf("seq 1 %d", total))

	cfg := logging.DefaultConfig()
	if err := cfg.ApplyAnnotations(map[string]string{
		logging.AnnotationPrefix + "max-size":  "64KiB",
		logging.AnnotationPrefix + "max-files": "1000",
	}); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("rot-%d", time.Now().UnixNano())
	dir := filepath.Join(base, "ctr")
	os.MkdirAll(dir, 0o755)
	p, err := cfg.Open(ctx, builtin.Registry(), logging.Metadata{ID: id}, dir)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := p.Source()

	exited := make(chan struct{})
	followed := make(chan error, 1)
	next := 1
	go func() {
		followed <- logging.ReadLogs(ctx, logging.ReadOptions{Source: src, Tail: logging.TailAll, Follow: true, Done: exited, Poll: 10 * time.Millisecond},
			fileCheckSeq(&next))
	}()

	fileRunInto(t, ctx, p, filepath.Join(base, "runc"), bundle, id)
	close(exited)
	if err := <-followed; err != nil {
		t.Fatal(err)
	}
	if next != total+1 {
		t.Fatalf("follower saw up to %d, want %d", next-1, total)
	}
	again := 1
	if err := logging.ReadLogs(ctx, logging.ReadOptions{Source: src, Tail: logging.TailAll}, fileCheckSeq(&again)); err != nil {
		t.Fatal(err)
	}
	if again != total+1 {
		t.Fatalf("reader saw up to %d, want %d", again-1, total)
	}
	st := p.Stats()
	if st.WriteError.Lines != 0 {
		t.Fatalf("stats %+v", st)
	}
	files, _ := filepath.Glob(src.Path + ".*")
	t.Logf("%d lines in %d records over %d files", total, st.Read.Lines, len(files)+1)
}

// fileCheckSeq joins partial records and checks that the lines count up from
// *next.
func fileCheckSeq(next *int) func(*logging.Record) error {
	var pending []byte
	return func(r *logging.Record) error {
		pending = append(pending, r.Line...)
		if r.Partial {
			return nil
		}
		line := string(pending)
		pending = pending[:0]
		if n, err := strconv.Atoi(line); err != nil || n != *next {
			return fmt.Errorf("line %q, want %d (lost or duplicated)", line, *next)
		}
		*next++
		return nil
	}
}
