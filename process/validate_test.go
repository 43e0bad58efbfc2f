package process

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestValidateID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"c1", true},
		{"a.b_c-d", true},
		{"ABC123", true},
		{strings.Repeat("a", 76), true},
		{strings.Repeat("a", 77), false},
		{"", false},
		{"-x", false},
		{"x-", false},
		{"a..b", false},
		{"../etc", false},
		{"a/b", false},
		{"a b", false},
		{"ü", false},
	} {
		err := ValidateID("container id", tc.id)
		if tc.ok != (err == nil) {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateID(%q) error %v is not InvalidArgument", tc.id, err)
		}
	}
}

func TestParseStdio(t *testing.T) {
	loggers := t.TempDir()
	logger := filepath.Join(loggers, "logger")
	if err := os.WriteFile(logger, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	outside := filepath.Join(other, "evil")
	if err := os.WriteFile(outside, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(loggers, "link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(loggers, "plain")
	if err := os.WriteFile(notExec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dirs := []string{loggers}
	for _, tc := range []struct {
		name   string
		in     Stdio
		scheme Scheme
		bad    string // substring of the error; "" = valid
	}{
		{"null", Stdio{}, SchemeNull, ""},
		{"fifos", Stdio{Stdin: "/f/in", Stdout: "/f/out", Stderr: "/f/err"}, SchemeFifo, ""},
		{"stderr only", Stdio{Stderr: "/f/err"}, SchemeFifo, ""},
		{"terminal", Stdio{Stdin: "/f/in", Stdout: "/f/out", Terminal: true}, SchemeFifo, ""},
		{"file", Stdio{Stdout: "file:///var/log/x.log", Stderr: "file:///var/log/x.log"}, SchemeFile, ""},
		{"binary", Stdio{Stdout: "binary://" + logger + "?a=b", Stderr: "binary://" + logger + "?a=b"}, SchemeBinary, ""},
		{"relative fifo", Stdio{Stdout: "out"}, "", `stdout path "out"`},
		{"unclean fifo", Stdio{Stdout: "/a/../b"}, "", "absolute and clean"},
		{"relative stdin", Stdio{Stdin: "in"}, "", `stdin path "in"`},
		{"uri on stdin", Stdio{Stdin: "file:///x"}, "", "only stdout"},
		{"unknown scheme", Stdio{Stdout: "tcp:///x"}, "", `unknown scheme "tcp"`},
		{"file with host", Stdio{Stdout: "file://host/x"}, "", "empty host"},
		{"file relative", Stdio{Stdout: "file:x"}, "", "absolute"},
		{"stderr differs", Stdio{Stdout: "file:///a", Stderr: "file:///b"}, "", "stderr"},
		{"binary outside", Stdio{Stdout: "binary://" + outside}, "", "not under an allowed"},
		{"binary symlink out", Stdio{Stdout: "binary://" + link}, "", "not under an allowed"},
		{"binary missing", Stdio{Stdout: "binary://" + loggers + "/nope"}, "", "no such file"},
		{"binary not executable", Stdio{Stdout: "binary://" + notExec}, "", "not an executable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParseStdio(tc.in, dirs)
			if tc.bad == "" {
				if err != nil {
					t.Fatal(err)
				}
				if p.Scheme != tc.scheme {
					t.Fatalf("scheme %q, want %q", p.Scheme, tc.scheme)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.bad) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v, want InvalidArgument containing %q", err, tc.bad)
			}
		})
	}
	if _, err := ParseStdio(Stdio{Stdout: "binary://" + logger}, nil); err == nil {
		t.Fatal("binary logger accepted without any allowed directory")
	}
}

func TestValidateBundle(t *testing.T) {
	good := t.TempDir()
	if err := os.WriteFile(filepath.Join(good, "config.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(good, "config.json")
	for _, tc := range []struct {
		bundle string
		ok     bool
	}{
		{good, true},
		{"", false},
		{"relative", false},
		{good + "/", false},
		{t.TempDir(), false}, // no config.json
		{file, false},        // not a directory
		{"/nonexistent/bundle", false},
	} {
		err := ValidateBundle(tc.bundle)
		if tc.ok != (err == nil) {
			t.Errorf("ValidateBundle(%q) = %v, want ok=%v", tc.bundle, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateBundle(%q) error %v is not InvalidArgument", tc.bundle, err)
		}
	}
}

func TestStateMachine(t *testing.T) {
	all := []Event{EvStart, EvPause, EvResume, EvExit, EvDelete}
	want := map[Status]map[Event]Status{
		Created: {EvStart: Running, EvExit: Stopped, EvDelete: Deleted},
		Running: {EvPause: Paused, EvExit: Stopped},
		Paused:  {EvResume: Running, EvExit: Stopped},
		Stopped: {EvDelete: Deleted},
		Deleted: {},
	}
	for from, edges := range want {
		for _, ev := range all {
			to, err := Next(from, ev)
			if exp, ok := edges[ev]; ok {
				if err != nil || to != exp {
					t.Errorf("%s --%s--> %s, %v; want %s", from, ev, to, err, exp)
				}
				continue
			}
			if err == nil || !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Errorf("%s --%s--> %s accepted (err %v), want FailedPrecondition", from, ev, to, err)
			}
			if to != from {
				t.Errorf("refused %s --%s--> changed state to %s", from, ev, to)
			}
		}
	}
}

func TestSetExitedWakesWaitersOnce(t *testing.T) {
	p := newProcess("c", "c", true, Stdio{})
	_ = p.Transition(EvStart)
	p.SetExited(3, p.CreatedAt)
	p.SetExited(4, p.CreatedAt) // a second exit is ignored
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed")
	}
	if p.ExitStatus != 3 || p.Status != Stopped {
		t.Fatalf("status %s exit %d", p.Status, p.ExitStatus)
	}
}

func TestParseMountOptions(t *testing.T) {
	flags, data := parseMountOptions([]string{"rbind", "ro", "nosuid", "lowerdir=/a", "upperdir=/b"})
	if data != "lowerdir=/a,upperdir=/b" {
		t.Errorf("data %q", data)
	}
	const want = 0x1000 | 0x4000 | 1 | 2 // MS_BIND|MS_REC|MS_RDONLY|MS_NOSUID
	if flags != want {
		t.Errorf("flags %#x, want %#x", flags, want)
	}
	flags, _ = parseMountOptions([]string{"ro", "rw"})
	if flags != 0 {
		t.Errorf("ro then rw: flags %#x", flags)
	}
}

func TestProcessOwnerMapsUserNamespace(t *testing.T) {
	spec := &specs.Spec{Linux: &specs.Linux{
		UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 200000, Size: 65536}},
	}}
	uid, gid := processOwner(spec, &specs.Process{User: specs.User{UID: 1000, GID: 10}})
	if uid != 101000 || gid != 200010 {
		t.Fatalf("owner %d:%d, want 101000:200010", uid, gid)
	}
	uid, gid = processOwner(&specs.Spec{}, &specs.Process{User: specs.User{UID: 5, GID: 6}})
	if uid != 5 || gid != 6 {
		t.Fatalf("owner without user namespace %d:%d", uid, gid)
	}
}
