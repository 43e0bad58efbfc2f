package conmon

import (
	"encoding/json"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
)

// TestJournaldLikeConmon: with -l journald: (and a k8s-file beside it)
// both monitors write the same journal entries: MESSAGE with its newline,
// PRIORITY 6/3, the tag and name fields, CONTAINER_PARTIAL_MESSAGE on an
// unfinished last line. libsystemd's CODE_* fields, which only conmon
// writes, and journald's own fields are left out.
func TestJournaldLikeConmon(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "journalctl")
	testutil.Journald(t)
	rootfs := sharedRootfs(t)
	got := map[string][]map[string]string{}
	for name, bin := range monitors(t) {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, bin, rootfs)
			id := uniqueID("10a1")
			bundle := h.bundle(id, []string{"sh", "-c", "echo hello; sleep 0.2; echo err >&2; sleep 0.2; printf part"})
			h.createOK(id, bundle, "-l", "journald:", "--log-tag", "the-tag")
			h.runcCmd("start", id)
			waitFile(t, h.exits+"/"+id)
			h.runcCmd("delete", "-f", id)
			got[name] = journalEntries(t, id, 3)
		})
	}
	ref, ok1 := got["conmon"]
	v2, ok2 := got["conmon-v2"]
	if ok1 && ok2 && !reflect.DeepEqual(ref, v2) {
		t.Fatalf("journal entries differ:\nconmon:    %v\nconmon-v2: %v", ref, v2)
	}
}

// journalEntries returns the container's entries (fields that matter to
// readers only), waiting until n arrived.
func journalEntries(t *testing.T, id string, n int) []map[string]string {
	t.Helper()
	keep := []string{"MESSAGE", "PRIORITY", "CONTAINER_TAG", "CONTAINER_NAME", "SYSLOG_IDENTIFIER", "CONTAINER_PARTIAL_MESSAGE"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("journalctl", "-o", "json", "CONTAINER_ID_FULL="+id).Output()
		if err != nil {
			t.Fatalf("journalctl: %v", err)
		}
		var entries []map[string]string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line == "" {
				continue
			}
			var raw map[string]any
			if err := json.Unmarshal([]byte(line), &raw); err != nil {
				t.Fatal(err)
			}
			e := map[string]string{}
			for _, k := range keep {
				if v, ok := raw[k].(string); ok {
					e[k] = strings.ReplaceAll(v, id, "ID")
				}
			}
			if raw["CONTAINER_ID"] != id[:12] {
				t.Fatalf("CONTAINER_ID %v, want %s", raw["CONTAINER_ID"], id[:12])
			}
			entries = append(entries, e)
		}
		if len(entries) >= n {
			return entries
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d journal entries for %s, want %d: %v", len(entries), id, n, entries)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
