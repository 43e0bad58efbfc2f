package launch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	"github.com/containers/conmon-v2/internal/testutil"
)

// fakeSelf writes a stand-in for the shim binary that, run as the daemon,
// records its arguments, working directory and environment and answers on
// the ready pipe (fd 4) with reply.
func fakeSelf(t *testing.T, dir, reply string) (self, record string) {
	t.Helper()
	record = filepath.Join(dir, "daemon-record")
	self = filepath.Join(dir, "fake-shim")
	testutil.WriteFile(t, self, "#!/bin/sh\n{ echo \"args: $*\"; echo \"cwd: $(pwd)\"; env; } > "+record+"\nprintf '%s' '"+reply+"' >&4\n", 0o755)
	return self, record
}

func TestStartSpawnsDaemon(t *testing.T) {
	dir, err := os.MkdirTemp("", "shimstart") // socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, filepath.Join(bundle, "config.json"), `{"annotations": {"io.kubernetes.cri.sandbox-id": "pod7"}}`, 0o644)
	self, record := fakeSelf(t, dir, "ok")
	body := "socket_dir = \"" + filepath.Join(dir, "s") + "\"\nruntime_root = \"/run/r\"\n"
	opts := mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigBody: []byte(body)})

	var out bytes.Buffer
	f := Flags{Namespace: "ns", ID: "c1", Address: "/run/c.sock", Bundle: bundle, Debug: true, Action: ActionStart}
	err = Start(context.Background(), f, StartEnv{Stdin: bytes.NewReader(mustMarshal(t, opts)), Stdout: &out, Self: self})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("/run/c.sock/ns/pod7"))
	want := "unix://" + filepath.Join(dir, "s", hex.EncodeToString(sum[:]))
	if out.String() != want {
		t.Fatalf("stdout %q, want %q", out.String(), want)
	}
	if a, _ := os.ReadFile(filepath.Join(bundle, AddressFile)); string(a) != want {
		t.Fatalf("address file %q", a)
	}
	saved, err := os.ReadFile(filepath.Join(bundle, ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ParseConfig("saved", saved); err != nil || c.RuntimeRoot != "/run/r" {
		t.Fatalf("saved config %+v %v", c, err)
	}
	rec, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"args: -namespace ns -id c1 -address /run/c.sock -debug\n",
		"cwd: /\n",
		GroupEnv + "=pod7\n",
		ReadyFDEnv + "=4\n",
		ConfigEnv + "=",
	} {
		if !strings.Contains(string(rec), s) {
			t.Errorf("daemon record lacks %q:\n%s", s, rec)
		}
	}
}

func TestStartReportsDaemonFailure(t *testing.T) {
	dir, err := os.MkdirTemp("", "shimstart")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "shim.toml")
	testutil.WriteFile(t, cfg, "socket_dir = \""+filepath.Join(dir, "s")+"\"\n", 0o644)
	self, _ := fakeSelf(t, dir, "state directory: permission denied")
	var out bytes.Buffer
	f := Flags{Namespace: "ns", ID: "c1", Bundle: dir, Config: cfg, Action: ActionStart}
	start := time.Now()
	err = Start(context.Background(), f, StartEnv{Stdin: strings.NewReader(""), Stdout: &out, Self: self})
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("got %v, want the daemon's own error", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("start waited for the ready timeout although the daemon answered")
	}
	if out.Len() != 0 {
		t.Fatalf("stdout %q after a failure", out.String())
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "s")); len(ents) != 0 {
		t.Fatalf("socket left after a failed start: %v", ents)
	}
	if _, err := os.Stat(filepath.Join(dir, AddressFile)); !os.IsNotExist(err) {
		t.Fatalf("address file written after a failed start: %v", err)
	}
}

func TestStartAnswer(t *testing.T) {
	if plain := startAnswer(StartInput{}, "unix:///s/x"); string(plain) != "unix:///s/x" {
		t.Fatalf("plain answer %q", plain)
	}
	// The hand-encoded BootstrapResult, read by the protobuf runtime as
	// containerd 2.3 reads it.
	b := startAnswer(StartInput{Bootstrap: true}, "unix:///s/x")
	var res bootstrap.BootstrapResult
	if err := proto.Unmarshal(b, &res); err != nil || res.Version != 3 || res.Address != "unix:///s/x" || res.Protocol != "ttrpc" {
		t.Fatalf("BootstrapResult %v %v", &res, err)
	}
}

// Only the pod grouping looks at the bundle's OCI spec: in the other
// modes start does not read config.json (runc reports a bad one at
// Create).
func TestStartReadsSpecOnlyForPods(t *testing.T) {
	for _, tt := range []struct {
		grouping string
		wantErr  bool
	}{
		{GroupContainer, false},
		{GroupNamespace, false},
		{GroupPod, true},
	} {
		t.Run(tt.grouping, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "shimstart")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			testutil.WriteFile(t, filepath.Join(dir, "config.json"), "{not json", 0o644)
			cfg := filepath.Join(dir, "shim.toml")
			testutil.WriteFile(t, cfg, "grouping = \""+tt.grouping+"\"\nsocket_dir = \""+filepath.Join(dir, "s")+"\"\n", 0o644)
			self, _ := fakeSelf(t, dir, "ok")
			var out bytes.Buffer
			f := Flags{Namespace: "ns", ID: "c1", Bundle: dir, Config: cfg, Action: ActionStart}
			err = Start(context.Background(), f, StartEnv{Stdin: strings.NewReader(""), Stdout: &out, Self: self})
			if tt.wantErr {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("got %v, want InvalidArgument for the unreadable spec", err)
				}
				return
			}
			if err != nil || !strings.HasPrefix(out.String(), "unix://") {
				t.Fatalf("start: %v, stdout %q", err, out.String())
			}
		})
	}
}
