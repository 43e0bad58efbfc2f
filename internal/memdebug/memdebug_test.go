package memdebug

import (
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"testing"
)

// TestWrite: one line per metric, in the order asked for; the profiles
// only when asked for.
func TestWrite(t *testing.T) {
	names := append(MemoryClasses(), "/sched/goroutines:goroutines")
	samples := make([]metrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	for _, profiles := range []bool{false, true} {
		base := filepath.Join(t.TempDir(), "1")
		write(base, samples, profiles)
		for ext, want := range map[string]bool{".metrics": true, ".heap": profiles, ".goroutines": profiles} {
			if _, err := os.Stat(base + ext); (err == nil) != want {
				t.Errorf("profiles %v: %s written: %v, want %v", profiles, ext, err == nil, want)
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
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv("X_MEMDEBUG", "/d")
	t.Setenv("X_MEMPROF", "1")
	t.Setenv("X_MEMDEBUG_PROFILES", "")
	if c := FromEnv("X_"); c.Dir != "/d" || !c.MemProf || c.Profiles {
		t.Errorf("FromEnv = %+v", c)
	}
}
