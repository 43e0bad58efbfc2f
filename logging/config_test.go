package logging_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/builtin"
)

func TestParseConfig(t *testing.T) {
	c, err := logging.ParseConfig([]byte(`
[logging]
drivers = ["k8s-file", "json-file"]
max-size = "10MiB"
max-files = 3
compress = true
tag = "{{.Name}}-{{.ID}}"
mode = "non-blocking"
max-buffer-size = "2m"
rate-bytes = "1MiB"
rate-lines = 500
rate-burst = "2s"
drop = ["^DEBUG", "healthz"]
fsync = "interval"
fsync-interval = "5s"
cache = false
redact = [{pattern = "token=\\w+", replacement = "token=***"}, {pattern = "secret"}]

[logging.labels]
team = "core"

[logging.driver.json-file]
path = "/var/log/x.json"
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, check := range []struct {
		name string
		ok   bool
	}{
		{"drivers", len(c.Drivers) == 2 && c.Drivers[1] == "json-file"},
		{"max-size", c.MaxSize == 10<<20},
		{"max-files", c.MaxFiles == 3},
		{"compress", c.Compress},
		{"tag", c.Tag == "{{.Name}}-{{.ID}}"},
		{"mode", c.Mode == logging.NonBlocking},
		{"max-buffer-size", c.MaxBufferSize == 2<<20},
		{"rate", c.RateBytes == 1<<20 && c.RateLines == 500 && c.RateBurst == 2*time.Second},
		{"drop", len(c.Drop) == 2},
		{"fsync", c.Fsync == logging.FsyncInterval && c.FsyncInterval == 5*time.Second},
		{"cache", !c.Cache},
		{"redact", len(c.Redact) == 2 && c.Redact[0].Replacement == "token=***" && c.Redact[1].Replacement == logging.DefaultRedaction},
		{"labels", c.Labels["team"] == "core"},
		{"driver options", c.DriverOptions["json-file"]["path"] == "/var/log/x.json"},
	} {
		if !check.ok {
			t.Errorf("%s not parsed: %+v", check.name, c)
		}
	}
}

// locked is a configuration for a host whose annotations are untrusted.
const locked = "[logging]\nannotation-allow = []\n"

func TestConfigErrorsNameTheOption(t *testing.T) {
	for _, tc := range []struct {
		name string
		toml string
		ann  map[string]string
		want string
	}{
		{name: "unknown key", toml: "[logging]\nmax-sise = 1", want: `"max-sise"`},
		{name: "bad size", toml: "[logging]\nmax-size = \"ten\"", want: "max-size"},
		{name: "bad mode", toml: "[logging]\nmode = \"fast\"", want: "mode"},
		{name: "bad regex", toml: "[logging]\ndrop = [\"(\"]", want: "drop"},
		{name: "bad toml", toml: "[logging\n", want: "logging configuration"},
		{name: "tiny buffer", toml: "[logging]\nmax-buffer-size = 10", want: "max-buffer-size"},
		{name: "huge buffer", ann: map[string]string{logging.AnnotationPrefix + "max-buffer-size": "100g"}, want: "max-buffer-size"},
		{name: "bad fsync", toml: "[logging]\nfsync = \"sometimes\"", want: "fsync"},
		{name: "bad annotation", ann: map[string]string{logging.AnnotationPrefix + "max-files": "-1"},
			want: logging.AnnotationPrefix + "max-files"},
		{name: "unknown annotation", ann: map[string]string{logging.AnnotationPrefix + "colour": "red"},
			want: logging.AnnotationPrefix + "colour"},
		{name: "orphan replacement", ann: map[string]string{logging.AnnotationPrefix + "redact-replacement.x": "y"},
			want: "redact-replacement.x"},
		{name: "bad tag", ann: map[string]string{logging.AnnotationPrefix + "tag": "{{.Nope"}, want: "tag"},
		{name: "path by annotation, locked down", toml: locked, ann: map[string]string{logging.AnnotationPrefix + "path": "/etc/cron.d/x"}, want: logging.AnnotationPrefix + "path"},
		{name: "driver socket by annotation, locked down", toml: locked, ann: map[string]string{logging.AnnotationPrefix + "opt.journald.socket": "/run/docker.sock"}, want: "opt.journald.socket"},
		{name: "address by annotation, locked down", toml: locked, ann: map[string]string{logging.AnnotationPrefix + "opt.syslog.address": "tcp://10.0.0.1:25"}, want: "opt.syslog.address"},
		{name: "tls file by annotation, locked down", toml: locked, ann: map[string]string{logging.AnnotationPrefix + "opt.syslog.tls-key": "/etc/shadow"}, want: "tls-key"},
		{name: "allow-list by annotation", ann: map[string]string{logging.AnnotationPrefix + "annotation-allow": "path"}, want: "annotation-allow"},
		{name: "allowed elsewhere only", toml: "[logging]\nannotation-allow = [\"opt.syslog.*\"]", ann: map[string]string{logging.AnnotationPrefix + "opt.fluentd.address": "x:1"}, want: "opt.fluentd.address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := logging.ParseConfig([]byte(tc.toml))
			if err == nil {
				err = c.ApplyAnnotations(tc.ann)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("not InvalidArgument: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
		})
	}
}

func TestAnnotationsOverFile(t *testing.T) {
	c, _ := logging.ParseConfig([]byte("[logging]\nmax-size = \"1m\"\ndrop = [\"a\"]\n"))
	err := c.ApplyAnnotations(map[string]string{
		logging.AnnotationPrefix + "max-size":                 "2m",
		logging.AnnotationPrefix + "drop":                     "b",
		logging.AnnotationPrefix + "driver":                   "json-file, k8s-file",
		logging.AnnotationPrefix + "redact.tok":               `tok=\S+`,
		logging.AnnotationPrefix + "redact-replacement.tok":   "tok=?",
		logging.AnnotationPrefix + "label.app":                "web",
		logging.AnnotationPrefix + "opt.journald.partial-msg": "true",
		"io.kubernetes.other":                                 "ignored",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxSize != 2<<20 || len(c.Drop) != 2 || strings.Join(c.Drivers, ",") != "json-file,k8s-file" ||
		len(c.Redact) != 1 || c.Redact[0].Replacement != "tok=?" || c.Labels["app"] != "web" ||
		c.DriverOptions["journald"]["partial-msg"] != "true" {
		t.Fatalf("%+v", c)
	}
}

func TestDockerSpellings(t *testing.T) {
	c := logging.DefaultConfig()
	if err := c.ApplyAnnotations(map[string]string{logging.AnnotationPrefix + "max-file": "3", logging.AnnotationPrefix + "max-size": "10m"}); err != nil {
		t.Fatal(err)
	}
	if c.MaxFiles != 3 || c.MaxSize != 10<<20 {
		t.Fatalf("%+v", c)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := logging.LoadConfig(filepath.Join(dir, "missing.toml")); !errdefs.IsNotFound(err) {
		t.Fatalf("explicit missing file: %v", err)
	}
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("[other]\nx=1\n[logging]\nmax-files = 7\n"), 0o600)
	c, err := logging.LoadConfig(p)
	if err != nil || c.MaxFiles != 7 || c.Drivers[0] != "k8s-file" {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "10k": 10 << 10, "10KiB": 10 << 10, "1.5m": 3 << 19,
		"2MB": 2e6, "1g": 1 << 30, "1GiB": 1 << 30, " 7 ": 7} {
		if got, err := logging.ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "x", "10q", "1e3"} {
		if _, err := logging.ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestRegistry(t *testing.T) {
	r := builtin.Registry()
	_, err := r.Open(context.Background(), "nosuch", logging.Info{})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("unknown driver: %v", err)
	}
	if err := r.Register("k8s-file", func(context.Context, logging.Info) (logging.Driver, error) { return nil, nil }); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := r.Register("Bad Name", nil); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad name: %v", err)
	}
	for _, n := range []string{"none", "off", "null", "passthrough", "k8s-file", "json-file"} {
		if _, ok := r.Resolve(n); !ok {
			t.Errorf("%s not registered", n)
		}
	}
	_, err = r.Open(context.Background(), "k8s-file", logging.Info{Options: map[string]string{"max-size": "lots"}})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "max-size") {
		t.Fatalf("bad option: %v", err)
	}
	_, err = r.Open(context.Background(), "k8s-file", logging.Info{})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "path") {
		t.Fatalf("no path: %v", err)
	}
	factoryErr := errors.New("plain failure")
	r.Register("failing", func(context.Context, logging.Info) (logging.Driver, error) { return nil, factoryErr })
	if _, err := r.Open(context.Background(), "failing", logging.Info{}); !errdefs.IsInvalidArgument(err) || !errors.Is(err, factoryErr) {
		t.Fatalf("factory error: %v", err)
	}
}

func TestConfigOpen(t *testing.T) {
	reg := builtin.Registry()
	meta := logging.Metadata{ID: "0123456789abcdef", Name: "web"}
	t.Run("default k8s-file under dir", func(t *testing.T) {
		dir := t.TempDir()
		c := logging.DefaultConfig()
		c.Tag = "{{.Name}}/{{.ID}}"
		p, err := c.Open(context.Background(), reg, meta, dir)
		if err != nil {
			t.Fatal(err)
		}
		if p.Metadata().Tag != "web/0123456789ab" {
			t.Fatalf("tag %q", p.Metadata().Tag)
		}
		p.WriteChunk(logging.Stdout, []byte("hello\n"))
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		src, ok := p.Source()
		if !ok || src.Path != filepath.Join(dir, "ctr.log") || src.Format != logging.FormatK8sFile {
			t.Fatalf("source %+v", src)
		}
		if b, _ := os.ReadFile(src.Path); !strings.HasSuffix(string(b), " stdout F hello\n") {
			t.Fatalf("file %q", b)
		}
	})
	t.Run("cache when no driver is readable", func(t *testing.T) {
		dir := t.TempDir()
		c := logging.DefaultConfig()
		c.Drivers = []string{"none"}
		p, err := c.Open(context.Background(), reg, meta, dir)
		if err != nil {
			t.Fatal(err)
		}
		p.WriteChunk(logging.Stderr, []byte("cached\n"))
		p.Close()
		src, ok := p.Source()
		if !ok || src.Path != filepath.Join(dir, logging.CacheDirName, "ctr.log") {
			t.Fatalf("source %+v %v", src, ok)
		}
		if b, _ := os.ReadFile(src.Path); !strings.HasSuffix(string(b), " stderr F cached\n") {
			t.Fatalf("cache %q", b)
		}
	})
	t.Run("cache off", func(t *testing.T) {
		c := logging.DefaultConfig()
		c.Drivers, c.Cache = []string{"none"}, false
		p, err := c.Open(context.Background(), reg, meta, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
		if _, ok := p.Source(); ok {
			t.Fatal("cache opened")
		}
	})
	t.Run("two file drivers on one path", func(t *testing.T) {
		c := logging.DefaultConfig()
		c.Drivers = []string{"k8s-file", "json-file"}
		c.Path = filepath.Join(t.TempDir(), "same.log")
		_, err := c.Open(context.Background(), reg, meta, "")
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "path") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("options for a driver not enabled", func(t *testing.T) {
		c := logging.DefaultConfig()
		c.Set("opt.json-file.path", "/x")
		_, err := c.Open(context.Background(), reg, meta, t.TempDir())
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "opt.json-file") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("unknown driver", func(t *testing.T) {
		c := logging.DefaultConfig()
		c.Drivers = []string{"k8s-file", "carrier-pigeon"}
		_, err := c.Open(context.Background(), reg, meta, t.TempDir())
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "carrier-pigeon") {
			t.Fatalf("%v", err)
		}
	})
}

// TestAnnotationsEndToEnd configures a container by annotations only and
// checks the k8s-file it gets: redacted, filtered, rate-limited with a
// marker, and counted.
func TestAnnotationsEndToEnd(t *testing.T) {
	c := logging.DefaultConfig()
	err := c.ApplyAnnotations(map[string]string{
		logging.AnnotationPrefix + "drop":       "^healthz",
		logging.AnnotationPrefix + "redact":     `password=\S+`,
		logging.AnnotationPrefix + "rate-lines": "3",
		logging.AnnotationPrefix + "rate-burst": "1s",
		logging.AnnotationPrefix + "max-size":   "1m",
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := c.Open(context.Background(), builtin.Registry(), logging.Metadata{ID: "e2e"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	p.WriteChunk(logging.Stdout, []byte("healthz ok\nlogin password=hunter2 done\none\ntwo\nthree\nfour\n"))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "ctr.log"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		_, rest, _ := strings.Cut(l, " ")
		got = append(got, rest)
	}
	want := []string{
		"stdout F login [REDACTED] done",
		"stdout F one",
		"stdout F two",
		"stdout F conmon-v2: rate limit: dropped 2 lines (9 bytes)",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	st := p.Stats()
	if st.Filtered.Lines != 1 || st.Redacted != 1 || st.RateLimited.Lines != 2 || st.Markers != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAnnotationAllow(t *testing.T) {
	// The default allows everything (conmonctl's --log-opt path travels
	// as an annotation), except in a Kubernetes container's spec.
	for _, tc := range []struct {
		name    string
		extra   map[string]string
		allowed bool
	}{
		{"conmonctl", nil, true},
		{"podman", map[string]string{"io.container.manager": "libpod", "io.kubernetes.cri-o.TTY": "false"}, true},
		{"conmonctl --group", map[string]string{"io.container.manager": "conmon-v2", "io.kubernetes.cri.sandbox-id": "g"}, true},
		{"containerd CRI", map[string]string{"io.kubernetes.cri.sandbox-id": "abc"}, false},
		{"CRI-O", map[string]string{"io.container.manager": "cri-o", "io.kubernetes.cri-o.Created": "x", "io.kubernetes.pod.name": "p"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ann := map[string]string{logging.AnnotationPrefix + "path": "/x/ctr.log", logging.AnnotationPrefix + "max-size": "1m"}
			for k, v := range tc.extra {
				ann[k] = v
			}
			d := logging.DefaultConfig()
			err := d.ApplyAnnotations(ann)
			if tc.allowed && (err != nil || d.Path != "/x/ctr.log") {
				t.Fatalf("want the path taken: %v", err)
			}
			if !tc.allowed && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "annotation-allow")) {
				t.Fatalf("want the path refused, got %v", err)
			}
			// An option naming nothing on the host is always taken.
			delete(ann, logging.AnnotationPrefix+"path")
			d = logging.DefaultConfig()
			if err := d.ApplyAnnotations(ann); err != nil || d.MaxSize != 1<<20 {
				t.Fatalf("max-size: %v %d", err, d.MaxSize)
			}
			// The file's annotation-allow decides for every origin.
			c, _ := logging.ParseConfig([]byte("[logging]\nannotation-allow = [\"path\"]\n"))
			ann[logging.AnnotationPrefix+"path"] = "/y/ctr.log"
			if err := c.ApplyAnnotations(ann); err != nil || c.Path != "/y/ctr.log" {
				t.Fatalf("listed: %v", err)
			}
			c, _ = logging.ParseConfig([]byte("[logging]\nannotation-allow = []\n"))
			if err := c.ApplyAnnotations(ann); err == nil {
				t.Fatal("annotation-allow = [] took a path")
			}
		})
	}
	c, err := logging.ParseConfig([]byte("[logging]\nannotation-allow = [\"opt.syslog.*\", \"path\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.ApplyAnnotations(map[string]string{
		logging.AnnotationPrefix + "opt.syslog.address": "udp://127.0.0.1:514",
		logging.AnnotationPrefix + "path":               "/var/log/pods/x.log",
	})
	if err != nil || c.Path != "/var/log/pods/x.log" || c.DriverOptions["syslog"]["address"] != "udp://127.0.0.1:514" {
		t.Fatalf("%v %+v", err, c)
	}
	// Flags and the file are trusted: Set takes a path.
	if err := c.Set("opt.journald.socket", "/run/systemd/journal/socket"); err != nil {
		t.Fatal(err)
	}
}
