package launch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
)

func TestMember(t *testing.T) {
	dir := t.TempDir()
	podBundle := filepath.Join(dir, "pod")
	if err := os.MkdirAll(podBundle, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := `{"ociVersion":"1.0.2","annotations":{"` + SandboxIDAnnotation + `":"pod1"}}`
	if err := os.WriteFile(filepath.Join(podBundle, "config.json"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(dir, "gone") // no config.json: only the pod mode needs one
	tests := []struct {
		grouping, group, id, bundle string
		want                        bool
	}{
		{GroupPod, "pod1", "c1", podBundle, true},
		{GroupPod, "pod2", "c1", podBundle, false},
		{GroupPod, "c1", "c1", podBundle, false}, // its annotation names another pod
		{GroupPod, "c1", "c1", gone, false},
		{GroupContainer, "c1", "c1", gone, true},
		{GroupContainer, "c2", "c1", podBundle, false},
		{GroupNamespace, "", "c1", gone, true},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.Grouping = tt.grouping
		if got := Member(c, tt.group, tt.id, tt.bundle); got != tt.want {
			t.Errorf("Member(%s, group %q, %s, %s) = %v, want %v", tt.grouping, tt.group, tt.id, filepath.Base(tt.bundle), got, tt.want)
		}
	}
}

func TestGroupKey(t *testing.T) {
	pod := map[string]string{SandboxIDAnnotation: "pod1"}
	tests := []struct {
		grouping    string
		annotations map[string]string
		want        string
	}{
		{GroupPod, pod, "pod1"},
		{GroupPod, nil, "c1"},
		{GroupPod, map[string]string{SandboxIDAnnotation: ""}, "c1"},
		{GroupContainer, pod, "c1"},
		{GroupNamespace, pod, ""},
		{GroupNamespace, nil, ""},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		c.Grouping = tt.grouping
		if got := GroupKey(c, "c1", tt.annotations); got != tt.want {
			t.Errorf("GroupKey(%s, %v) = %q, want %q", tt.grouping, tt.annotations, got, tt.want)
		}
	}
}

func TestSocketPath(t *testing.T) {
	hash := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	tests := []struct {
		dir, addr, ns, group string
		want                 string
	}{
		// The captured containerd runc shim derives the same name from the
		// same inputs (shimv2.md §2.2).
		{"/run/conmon-v2/s", "/w/containerd.sock", "default", "c1", "/run/conmon-v2/s/" + hash("/w/containerd.sock/default/c1")},
		{"/run/conmon-v2/s", "/w/containerd.sock", "default", "pod1", "/run/conmon-v2/s/" + hash("/w/containerd.sock/default/pod1")},
		// CRI-O: empty containerd address.
		{"/run/conmon-v2/s", "", "default", "c1", "/run/conmon-v2/s/" + hash("default/c1")},
		// Dense mode: empty group.
		{"/run/conmon-v2/s", "/w/c.sock", "k8s.io", "", "/run/conmon-v2/s/" + hash("/w/c.sock/k8s.io")},
	}
	for _, tt := range tests {
		got, err := SocketPath(tt.dir, "", tt.addr, tt.ns, tt.group)
		if err != nil || got != tt.want {
			t.Errorf("SocketPath(%q,%q,%q,%q) = %q, %v; want %q", tt.dir, tt.addr, tt.ns, tt.group, got, err, tt.want)
		}
	}
	if hash("/w/containerd.sock/default/c1") == hash("/w2/containerd.sock/default/c1") {
		t.Fatal("two containerd instances share a socket")
	}
	if _, err := SocketPath("/"+strings.Repeat("d", 41), "", "", "ns", "g"); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("107-byte socket path: %v, want InvalidArgument", err)
	}
	if p, err := SocketPath("/"+strings.Repeat("d", 40), "", "", "ns", "g"); err != nil || len(p) != 106 {
		t.Fatalf("106-byte socket path: %q %v", p, err)
	}
	if p, _ := SocketPath("/run/containerd/s", SharedSocketPrefix, "/c.sock", "ns", "g"); p != "/run/containerd/s/conmon-"+hash("/c.sock/ns/g") {
		t.Fatalf("shared socket dir path %q", p)
	}
}

func TestSocketFromAddress(t *testing.T) {
	if p, err := SocketFromAddress("unix:///run/x/s"); err != nil || p != "/run/x/s" {
		t.Fatalf("got %q %v", p, err)
	}
	for _, bad := range []string{"/run/x", "unix://rel", "vsock://3:4", ""} {
		if _, err := SocketFromAddress(bad); !errdefs.IsInvalidArgument(err) {
			t.Errorf("SocketFromAddress(%q) = %v, want InvalidArgument", bad, err)
		}
	}
}

func TestListenGroup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	sock := filepath.Join(dir, "g")
	l, _, err := listenGroup(sock, "c1")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v %v, want 0700", st.Mode(), err)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v, want 0600", st.Mode(), err)
	}
	// A daemon serves the group: the second member joins it. (The
	// daemon's side of Join is tested with it, in package shim.)
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	joined := make(chan string, 1)
	srv.RegisterService(GroupService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Join": func(_ context.Context, unmarshal func(any) error) (any, error) {
			var req taskv2.ConnectRequest
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			joined <- req.GetID()
			return &runtimeoptions.Options{ConfigBody: []byte("grouping = \"namespace\"\n")}, nil
		},
	}})
	go srv.Serve(context.Background(), l)
	_, daemonCfg, err := listenGroup(sock, "c2")
	if !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second listen: %v, want AlreadyExists", err)
	}
	if string(daemonCfg) != "grouping = \"namespace\"\n" {
		t.Fatalf("daemon config %q", daemonCfg)
	}
	if id := <-joined; id != "c2" {
		t.Fatalf("the daemon was told of %q, want c2", id)
	}
	// The daemon died without removing its socket: replaced.
	srv.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("closing the listener removed the socket: %v", err)
	}
	l2, _, err := listenGroup(sock, "c3")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "address")
	for _, content := range []string{"unix:///a", "unix:///bb"} {
		if err := WriteFileAtomic(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != content {
			t.Fatalf("got %q %v, want %q", got, err, content)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	for _, mode := range []os.FileMode{0o600, 0o644, 0o400} {
		p := filepath.Join(dir, "mode"+mode.String())
		if err := WriteFileAtomic(p, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != mode {
			t.Fatalf("%s: mode %v %v, want %v", p, st.Mode(), err, mode)
		}
	}
	// A rename that fails (the target is a non-empty directory) leaves
	// no temporary file behind.
	target := filepath.Join(dir, "busy")
	if err := os.MkdirAll(filepath.Join(target, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadDir(dir)
	if err := WriteFileAtomic(target, []byte("x"), 0o600); err == nil {
		t.Fatal("WriteFileAtomic over a non-empty directory succeeded")
	}
	if after, _ := os.ReadDir(dir); len(after) != len(before) {
		t.Fatalf("temporary file left after a failed rename: %v", after)
	}
}
