package service

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containers/conmon-v2/process"
)

// TestRecordWriter: after a flush, each task's file holds the last state
// put for it (or is gone when that was a removal), whatever the writer
// goroutine was doing meanwhile; once stopped, put writes at once.
func TestRecordWriter(t *testing.T) {
	type op struct {
		id     string
		status string // "": remove
	}
	for _, tc := range []struct {
		name string
		ops  []op
		want map[string]string // id -> status; "": no record
	}{
		{"last state wins", []op{{"a", "created"}, {"a", "running"}, {"a", "stopped"}}, map[string]string{"a": "stopped"}},
		{"removed", []op{{"a", "created"}, {"a", "running"}, {"a", ""}}, map[string]string{"a": ""}},
		{"re-created after removal", []op{{"a", "running"}, {"a", ""}, {"a", "created"}}, map[string]string{"a": "created"}},
		{"tasks apart", []op{{"a", "running"}, {"b", "created"}, {"a", ""}, {"b", "running"}}, map[string]string{"a": "", "b": "running"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, stopped := range []bool{false, true} {
				dir := t.TempDir()
				w := newRecordWriter(dir, slog.Default())
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					w.run(ctx)
				}()
				if stopped {
					cancel()
					wg.Wait()
				}
				for _, o := range tc.ops {
					var data []byte
					if o.status != "" {
						var err error
						if data, err = process.MarshalRecord(process.Record{ID: o.id, Status: o.status}); err != nil {
							t.Fatal(err)
						}
					}
					w.put(o.id, data)
				}
				if !stopped {
					w.flush()
				}
				for id, want := range tc.want {
					rec, err := process.ReadRecord(dir, id)
					switch {
					case want == "" && !errors.Is(err, os.ErrNotExist):
						t.Errorf("stopped=%v: record of %s = %+v, %v; want none", stopped, id, rec, err)
					case want != "" && (err != nil || rec.Status != want):
						t.Errorf("stopped=%v: record of %s = %+v, %v; want status %s", stopped, id, rec, err, want)
					}
				}
				if ents, _ := filepath.Glob(filepath.Join(dir, "*", ".state-*")); len(ents) > 0 {
					t.Errorf("stopped=%v: temporary files left: %v", stopped, ents)
				}
				cancel()
				wg.Wait()
			}
		})
	}
}

// TestRecordWriterOOMCount: a task's count of OOM kills is written beside
// its record, the last one queued winning; the task's removal removes it,
// and a count queued after the removal makes no file.
func TestRecordWriterOOMCount(t *testing.T) {
	dir := t.TempDir()
	r := newRecordWriter(dir, slog.Default())
	rec, err := process.MarshalRecord(process.Record{ID: "a", Status: "running"})
	if err != nil {
		t.Fatal(err)
	}
	r.put("a", rec)
	r.putOOM("a", 1)
	r.putOOM("a", 2)
	r.flush()
	if n, ok := process.ReadOOMCount(dir, "a"); !ok || n != 2 {
		t.Fatalf("count %d, %v; want 2", n, ok)
	}
	r.put("a", nil)
	r.flush()
	r.putOOM("a", 3)
	r.flush()
	if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
		t.Fatalf("the removed task's directory is back (%v)", err)
	}
}
