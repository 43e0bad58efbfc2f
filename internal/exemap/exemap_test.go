package exemap

import (
	"testing"
)

// TestReadOnly: the test binary's code is among its read-only mappings,
// and dropping them leaves the process running (the code faults back in).
func TestReadOnly(t *testing.T) {
	spans := ReadOnly()
	if len(spans) == 0 {
		t.Fatal("no read-only mapping of the executable found in /proc/self/maps")
	}
	for _, sp := range spans {
		if sp[1] <= sp[0] {
			t.Fatalf("empty or reversed span %#x-%#x", sp[0], sp[1])
		}
	}
	spans.Drop()
	if got := len(ReadOnly()); got != len(spans) {
		t.Fatalf("after Drop: %d spans, want %d (the mappings stay)", got, len(spans))
	}
}
