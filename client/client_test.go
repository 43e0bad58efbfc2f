package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"web", true},
		{"a.b_c-d9", true},
		{strings.Repeat("a", 76), true},
		{strings.Repeat("a", 77), false},
		{"", false},
		{"-a", false},
		{"a--b", false},
		{"a/b", false},
		{"a b", false},
	}
	for _, tc := range tests {
		err := ValidateID(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Errorf("ValidateID(%q) error %v is not InvalidArgument", tc.id, err)
		}
	}
}

func TestNewSpec(t *testing.T) {
	rootfs, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(rootfs, link); err != nil {
		t.Fatal(err)
	}
	s, err := NewSpec(SpecOpts{Rootfs: link, Args: []string{"sh"}, Env: []string{"A=1"}, Terminal: true,
		Hostname: "h", MemoryLimit: 1 << 20, Annotations: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Root.Path != rootfs || s.Root.Readonly || s.Hostname != "h" || s.Annotations["k"] != "v" ||
		!s.Process.Terminal || *s.Linux.Resources.Memory.Limit != 1<<20 || s.Linux.CgroupsPath != "/conmon-v2/h" {
		t.Errorf("spec: %+v", s)
	}
	env := strings.Join(s.Process.Env, " ")
	if !strings.Contains(env, "PATH=") || !strings.Contains(env, "TERM=xterm") || !strings.Contains(env, "A=1") {
		t.Errorf("env: %v", s.Process.Env)
	}
	bad := []struct {
		name string
		o    SpecOpts
	}{
		{"no args", SpecOpts{Rootfs: rootfs}},
		{"missing rootfs", SpecOpts{Rootfs: filepath.Join(rootfs, "nope"), Args: []string{"x"}}},
		{"bad env", SpecOpts{Rootfs: rootfs, Args: []string{"x"}, Env: []string{"NOEQUALS"}}},
		{"negative memory", SpecOpts{Rootfs: rootfs, Args: []string{"x"}, MemoryLimit: -1}},
	}
	for _, tc := range bad {
		if _, err := NewSpec(tc.o); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%s: %v, want InvalidArgument", tc.name, err)
		}
	}
	bundle := filepath.Join(t.TempDir(), "b")
	if err := WriteSpec(bundle, s); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSpec(bundle)
	if err != nil || back.Hostname != "h" {
		t.Errorf("ReadSpec: %v %+v", err, back)
	}
}

func mustAny(t *testing.T, url string, m proto.Message) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: url, Value: b}
}

func TestDecodeStats(t *testing.T) {
	v1 := &stats1.Metrics{
		CPU:    &stats1.CPUStat{Usage: &stats1.CPUUsage{Total: 5e9}},
		Memory: &stats1.MemoryStat{Usage: &stats1.MemoryEntry{Usage: 10 << 20, Limit: 64 << 20}, TotalInactiveFile: 2 << 20},
		Pids:   &stats1.PidsStat{Current: 3, Limit: 100},
	}
	v2 := &stats2.Metrics{
		CPU:    &stats2.CPUStat{UsageUsec: 5e6},
		Memory: &stats2.MemoryStat{Usage: 10 << 20, UsageLimit: 64 << 20, InactiveFile: 2 << 20},
		Pids:   &stats2.PidsStat{Current: 3, Limit: 100},
	}
	want := Stats{CPUNanos: 5e9, MemoryBytes: 8 << 20, MemoryLimit: 64 << 20, Pids: 3, PidsLimit: 100}
	for _, a := range []*anypb.Any{
		mustAny(t, "io.containerd.cgroups.v1.Metrics", v1),
		mustAny(t, "type.googleapis.com/io.containerd.cgroups.v2.Metrics", v2),
	} {
		got, err := DecodeStats(a)
		if err != nil || got != want {
			t.Errorf("%s: %+v %v, want %+v", a.TypeUrl, got, err, want)
		}
	}
	if _, err := DecodeStats(&anypb.Any{TypeUrl: "x.Other"}); !errdefs.IsNotImplemented(err) {
		t.Errorf("unknown type: %v", err)
	}
	t0 := time.Unix(100, 0)
	if p := CPUPercent(Stats{Time: t0, CPUNanos: 0}, Stats{Time: t0.Add(time.Second), CPUNanos: 5e8}); p != 50 {
		t.Errorf("CPUPercent = %v, want 50", p)
	}
}

// TestIO plays the shim's side of the fifos: it writes the outputs and
// reads the input.
func TestIO(t *testing.T) {
	set, err := NewFIFOSet(t.TempDir(), "p", true, true, true, false)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	eof := make(chan struct{})
	ctx := context.Background()
	cio, err := OpenIO(ctx, set, Streams{Stdin: strings.NewReader("input"), Stdout: &stdout, Stderr: &stderr}, func() { close(eof) })
	if err != nil {
		t.Fatal(err)
	}
	defer cio.Close()
	in, err := os.OpenFile(set.Stdio.Stdin, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(in)
	in.Close()
	if string(got) != "input" {
		t.Errorf("stdin = %q", got)
	}
	select {
	case <-eof:
	case <-time.After(5 * time.Second):
		t.Error("onStdinEOF not called")
	}
	for path, text := range map[string]string{set.Stdio.Stdout: "out", set.Stdio.Stderr: "err"} {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(text)
		f.Close()
	}
	if !cio.Wait(5 * time.Second) {
		t.Fatal("output copies did not end at EOF")
	}
	if stdout.String() != "out" || stderr.String() != "err" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	if err := set.Remove(); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(set.Stdio.Stdout); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("fifo not removed: %v", err)
	}
}

func TestConnectErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := Connect(ctx, ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("empty address: %v", err)
	}
	if _, err := Connect(ctx, "unix://"+filepath.Join(t.TempDir(), "none")); !errdefs.IsUnavailable(err) {
		t.Errorf("missing socket: %v, want Unavailable", err)
	}
	if _, err := StartShim(ctx, ShimOpts{Binary: "/nonexistent/shim"}, "c1", t.TempDir()); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bundle without config.json: %v", err)
	}
}
