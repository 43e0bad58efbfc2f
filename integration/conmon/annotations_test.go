package conmon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/conmon-v2/internal/testutil"
)

// TestLogAnnotationsLikeCRIO: a CRI-O container's spec carries the pod's
// annotations. Log annotations add drivers and options, but since the
// annotations come from Kubernetes users (an io.kubernetes.* annotation is
// present) they may not name a host path unless the [logging] table of the
// configuration file allows it.
func TestLogAnnotationsLikeCRIO(t *testing.T) {
	testutil.RequiresRoot(t)
	rootfs := sharedRootfs(t)
	h := newHarness(t, testutil.Bin(t, "conmon-v2"), rootfs)
	conf := filepath.Join(h.dir, "config.toml")
	t.Setenv("CONMON_V2_CONFIG", conf)
	withAnn := func(ann map[string]string) func(map[string]any) {
		return func(spec map[string]any) {
			a := map[string]any{"io.kubernetes.cri-o.ContainerType": "container"}
			for k, v := range ann {
				a["io.containers.conmon-v2.log."+k] = v
			}
			spec["annotations"] = a
		}
	}

	// An added json-file in the bundle (its default place), under a
	// global redaction from the file.
	if err := os.WriteFile(conf, []byte("[logging]\nredact = [{pattern = \"secret=\\\\S+\", replacement = \"secret=***\"}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := uniqueID("a11")
	bundle := h.bundle(id, []string{"sh", "-c", "echo token secret=abc; exit 0"}, withAnn(map[string]string{"driver": "json-file"}))
	msg, rc, sp := h.create(id, bundle)
	sp.Close()
	if rc != 0 || !strings.HasPrefix(msg, `{"pid": `) {
		t.Fatalf("create: exit %d sync %q", rc, msg)
	}
	h.runcCmd("start", id)
	waitFile(t, filepath.Join(h.exits, id))
	h.runcCmd("delete", "-f", id)
	if got := logLines(t, filepath.Join(h.dir, id+".log")); len(got) != 1 || got[0] != "stdout F token secret=***" {
		t.Fatalf("k8s-file %q: want the redacted line", got)
	}
	j, err := os.ReadFile(filepath.Join(bundle, "ctr.json.log"))
	if err != nil || !strings.Contains(string(j), `"log":"token secret=***\n"`) {
		t.Fatalf("json-file from the annotation: %q %v", j, err)
	}

	// A host path from a Kubernetes user's annotation is refused...
	if err := os.WriteFile(conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(h.dir, "elsewhere.log")
	ann := map[string]string{"driver": "json-file", "opt.json-file.path": target}
	id = uniqueID("a12")
	msg, rc, sp = h.create(id, h.bundle(id, []string{"true"}, withAnn(ann)))
	sp.Close()
	if rc != 1 || !strings.Contains(msg, `": -1, "message": "annotation io.containers.conmon-v2.log.opt.json-file.path`) || !strings.Contains(msg, "opt.json-file.path names a file, socket or address on the host") {
		t.Fatalf("path annotation of a Kubernetes container: exit %d sync %q", rc, msg)
	}
	if _, err := os.Stat(target); err == nil {
		t.Fatalf("%s was written", target)
	}
	// ... unless the file allows it.
	if err := os.WriteFile(conf, []byte("[logging]\nannotation-allow = [\"opt.json-file.path\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id = uniqueID("a13")
	msg, rc, sp = h.create(id, h.bundle(id, []string{"echo", "allowed"}, withAnn(ann)))
	sp.Close()
	if rc != 0 {
		t.Fatalf("allowed path annotation: exit %d sync %q", rc, msg)
	}
	h.runcCmd("start", id)
	waitFile(t, filepath.Join(h.exits, id))
	h.runcCmd("delete", "-f", id)
	if b, err := os.ReadFile(target); err != nil || !strings.Contains(string(b), "allowed") {
		t.Fatalf("allowed json-file: %q %v", b, err)
	}
}
