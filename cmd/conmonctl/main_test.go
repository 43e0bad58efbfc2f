package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		stopAtArg bool
		wantArgs  []string
		wantI     bool
		wantT     bool
		wantN     string
	}{
		{"grouped", []string{"-it", "--name", "x", "--", "sh"}, true, []string{"sh"}, true, true, "x"},
		{"stop at command", []string{"-i", "sh", "-t"}, true, []string{"sh", "-t"}, true, false, ""},
		{"interleaved", []string{"web", "-t", "--name=y"}, false, []string{"web"}, false, true, "y"},
		{"dash dash keeps flags", []string{"web", "--", "-t"}, false, []string{"web", "-t"}, false, false, ""},
		{"value not expanded", []string{"--name", "-it", "c"}, true, []string{"c"}, false, false, "-it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			i := fs.Bool("i", false, "")
			tt := fs.Bool("t", false, "")
			n := fs.String("name", "", "")
			args, err := parseFlags(fs, tc.args, tc.stopAtArg)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(args, tc.wantArgs) || *i != tc.wantI || *tt != tc.wantT || *n != tc.wantN {
				t.Errorf("args %q i=%v t=%v name=%q", args, *i, *tt, *n)
			}
		})
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Bool("i", false, "")
	if _, err := parseFlags(fs, []string{"-iz"}, true); err == nil {
		t.Error("-iz with no -z flag parsed")
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true}, {"1024", 1024, true}, {"64m", 64 << 20, true}, {"2G", 2 << 30, true}, {"10kb", 10 << 10, true},
		{"lots", 0, false}, {"-5", 0, false}, {"0", 0, false}, {"1.5m", 0, false},
	}
	for _, tc := range tests {
		got, err := parseBytes(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseBytes(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"10m", now.Add(-10 * time.Minute), true},
		{"2026-01-01T00:00:00Z", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), true},
		{"1700000000", time.Unix(1700000000, 0), true},
		{"yesterday", time.Time{}, false},
		{"-5m", time.Time{}, false},
	}
	for _, tc := range tests {
		got, err := parseSince(tc.in, now)
		if (err == nil) != tc.ok || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestParseLogOpts(t *testing.T) {
	dir := t.TempDir()
	opts, err := parseLogOpts("k8s-file", []string{"max-size=1m", "path=" + dir + "/x.log"})
	if err != nil || opts["max-size"] != "1m" || opts["path"] != dir+"/x.log" {
		t.Errorf("good options: %v %v", opts, err)
	}
	bad := []struct {
		driver string
		opts   []string
		want   string
	}{
		{"k8s-file", []string{"max-size=big"}, "max-size"},
		{"k8s-file", []string{"novalue"}, "not K=V"},
		{"k8s-file", []string{"frob=1"}, `unknown log option "frob"`},
		{"nosuch", nil, "unknown log driver"},
		{"k8s-file", []string{"path=/nonexistent/dir/f"}, "does not exist"},
	}
	for _, tc := range bad {
		if _, err := parseLogOpts(tc.driver, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseLogOpts(%s, %v) = %v, want an error with %q", tc.driver, tc.opts, err, tc.want)
		}
	}
}

func TestUsage(t *testing.T) {
	for name := range commands(&options{}) {
		var out, errb bytes.Buffer
		a := &app{stdout: &out, stderr: &errb, opts: &options{}}
		if code := a.main(context.Background(), []string{name, "--help"}); code != 0 {
			t.Errorf("%s --help: exit %d, %s", name, code, errb.String())
		}
		if !strings.Contains(out.String(), "Example:") {
			t.Errorf("%s --help has no example:\n%s", name, out.String())
		}
	}
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, opts: &options{}}
	if code := a.main(context.Background(), []string{"nosuch"}); code != exitUsage || !strings.Contains(errb.String(), "unknown command") {
		t.Errorf("unknown command: %d %q", code, errb.String())
	}
}

func TestDetachReader(t *testing.T) {
	tests := []struct {
		in, want string
		detached bool
	}{
		{"hello", "hello", false},
		{"ab\x10\x11cd", "ab", true},
		{"\x10x\x11", "\x10x\x11", false},
		{"\x10\x11", "", true},
	}
	for _, tc := range tests {
		detached := false
		d := &detachReader{r: strings.NewReader(tc.in), detach: func() { detached = true }}
		got, _ := io.ReadAll(d)
		if string(got) != tc.want || detached != tc.detached {
			t.Errorf("%q: read %q detached=%v, want %q %v", tc.in, got, detached, tc.want, tc.detached)
		}
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"9", 9, true}, {"KILL", 9, true}, {"SIGTERM", 15, true}, {"hup", 1, true}, {"winch", 28, true},
		{"0", 0, false}, {"65", 0, false}, {"FROB", 0, false}, {"", 0, false},
	}
	for _, tc := range tests {
		got, err := parseSignal(tc.in)
		if (err == nil) != tc.ok || int(got) != tc.want {
			t.Errorf("parseSignal(%q) = %d, %v", tc.in, got, err)
		}
	}
}
