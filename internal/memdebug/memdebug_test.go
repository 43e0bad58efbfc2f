package memdebug

import (
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	for _, tc := range []struct {
		name     string
		profiles bool
		want     []string
		absent   []string
	}{
		{"metrics only", false, []string{".metrics"}, []string{".heap", ".goroutines"}},
		{"with profiles", true, []string{".metrics", ".heap", ".goroutines"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := filepath.Join(t.TempDir(), "1")
			names := append(MemoryClasses(), "/sched/goroutines:goroutines")
			samples := make([]metrics.Sample, len(names))
			for i, n := range names {
				samples[i].Name = n
			}
			write(base, samples, tc.profiles)
			for _, ext := range tc.want {
				if _, err := os.Stat(base + ext); err != nil {
					t.Errorf("%s: %v", ext, err)
				}
			}
			for _, ext := range tc.absent {
				if _, err := os.Stat(base + ext); err == nil {
					t.Errorf("%s written without profiles", ext)
				}
			}
			b, err := os.ReadFile(base + ".metrics")
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			if len(lines) != len(names) {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), len(names), b)
			}
			for i, l := range lines {
				if !strings.HasPrefix(l, names[i]+" ") {
					t.Errorf("line %d = %q, want %s first", i, l, names[i])
				}
			}
		})
	}
}
