package conmon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/k8sfile"
	"github.com/containers/conmon-v2/logging/passthrough"
)

const annPrefix = logging.AnnotationPrefix

func testConfig(t *testing.T, args ...string) *Config {
	t.Helper()
	base := []string{"-c", strings.Repeat("c", 64), "-u", "u", "-r", "/bin/true", "-b", t.TempDir()}
	o, err := Parse(append(base, args...))
	if err != nil {
		t.Fatal(err)
	}
	c, err := Validate(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLogSettingsPrecedence(t *testing.T) {
	t.Setenv(EnvConfig, filepath.Join(t.TempDir(), "none.toml"))
	os.WriteFile(os.Getenv(EnvConfig), nil, 0o644)
	common := func(extra map[string]string) map[string]string {
		m := map[string]string{"fsync": "exit", "fsync-interval": "1s"}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name  string
		args  []string
		ann   map[string]string
		want  []LogDriver
		tag   string
		label map[string]string
		err   string
	}{{
		name: "flags only",
		args: []string{"-l", "k8s-file:/k"},
		want: []LogDriver{{Name: "k8s-file", Options: common(map[string]string{"path": "/k"})}},
	}, {
		name: "annotation adds a driver with rotation, which also reaches the flag's file",
		args: []string{"-l", "k8s-file:/k"},
		ann:  map[string]string{annPrefix + "driver": "json-file", annPrefix + "max-size": "1k", annPrefix + "max-files": "3", annPrefix + "opt.json-file.path": "/j"},
		want: []LogDriver{
			{Name: "k8s-file", Options: common(map[string]string{"path": "/k", "max-size": "1024", "max-files": "3"})},
			{Name: "json-file", Options: common(map[string]string{"path": "/j", "max-size": "1024", "max-files": "3"})},
		},
	}, {
		name: "flags win for their driver; the common path goes to the added file driver only",
		args: []string{"-l", "k8s-file:/k", "--log-size-max", "100", "--no-sync-log"},
		ann:  map[string]string{annPrefix + "driver": "k8s-file,json-file", annPrefix + "max-size": "1k", annPrefix + "path": "/p", annPrefix + "fsync": "interval"},
		want: []LogDriver{
			{Name: "k8s-file", Options: map[string]string{"path": "/k", "max-size": "100", "truncate": "true", "fsync": "none", "fsync-interval": "1s"}},
			{Name: "json-file", Options: common(map[string]string{"path": "/p", "max-size": "1024", "fsync": "interval"})},
		},
	}, {
		name: "-l none and an added syslog; aliases count as one",
		args: []string{"-l", "none"},
		ann:  map[string]string{annPrefix + "driver": "syslog,off,null", annPrefix + "opt.syslog.address": "udp://127.0.0.1:1"},
		want: []LogDriver{
			{Name: "syslog", Options: common(map[string]string{"address": "udp://127.0.0.1:1"})},
			{Name: "off", Options: common(nil)},
		},
	}, {
		name: "two plugins from the flags stay two drivers",
		args: []string{"-l", "plugin:unix:///s", "-l", "plugin:/p"},
		want: []LogDriver{
			{Name: "plugin", Options: common(map[string]string{"socket": "/s"})},
			{Name: "plugin", Options: common(map[string]string{"path": "/p"})},
		},
	}, {
		name:  "--log-tag and --log-label win",
		args:  []string{"-l", "journald", "--log-tag", "flag-tag", "--log-label", "a=flag"},
		ann:   map[string]string{annPrefix + "tag": "{{.Name}}", annPrefix + "label.a": "ann", annPrefix + "label.b": "ann"},
		want:  []LogDriver{{Name: "journald", Options: common(map[string]string{"partial-message": "true"})}},
		tag:   "flag-tag",
		label: map[string]string{"a": "flag", "b": "ann"},
	}, {
		name: "tag template from an annotation",
		args: []string{"-l", "journald", "-n", "web"},
		ann:  map[string]string{annPrefix + "tag": "app-{{.Name}}"},
		want: []LogDriver{{Name: "journald", Options: common(map[string]string{"partial-message": "true"})}},
		tag:  "app-web",
	}, {
		name: "exec sessions ignore annotations",
		args: []string{"-e", "--exec-process-spec", "/x", "-l", "none"},
		ann:  map[string]string{annPrefix + "driver": "syslog"},
		want: []LogDriver{{Name: "none", Options: common(nil)}},
	}, {
		name: "bad value names the annotation",
		args: []string{"-l", "k8s-file:/k"},
		ann:  map[string]string{annPrefix + "max-size": "lots"},
		err:  "annotation " + annPrefix + "max-size: log option max-size=\"lots\"",
	}, {
		name: "unknown option",
		args: []string{"-l", "k8s-file:/k"},
		ann:  map[string]string{annPrefix + "colour": "red"},
		err:  `unknown log option "colour"`,
	}, {
		name: "unknown driver",
		args: []string{"-l", "k8s-file:/k"},
		ann:  map[string]string{annPrefix + "driver": "carrier-pigeon"},
		err:  `no such log driver "carrier-pigeon"`,
	}, {
		name: "passthrough cannot be added",
		args: []string{"-l", "k8s-file:/k"},
		ann:  map[string]string{annPrefix + "driver": "passthrough"},
		err:  "log driver passthrough cannot be added",
	}, {
		name: "options of a driver that is not enabled",
		args: []string{"-l", "k8s-file:/k"},
		ann:  map[string]string{annPrefix + "opt.syslog.address": "udp://127.0.0.1:1"},
		err:  `log option opt.syslog: driver "syslog" is not enabled`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig(t, tc.args...)
			s, err := resolveLogSettings(c, tc.ann)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("%v is not InvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Drivers(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("drivers\n got %+v\nwant %+v", got, tc.want)
			}
			if s.meta.Tag != tc.tag {
				t.Fatalf("tag %q, want %q", s.meta.Tag, tc.tag)
			}
			if tc.label != nil && !reflect.DeepEqual(s.meta.Labels, tc.label) {
				t.Fatalf("labels %v, want %v", s.meta.Labels, tc.label)
			}
		})
	}
}

func TestLogSettingsConfigFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	t.Setenv(EnvConfig, path)
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	names := func(s *LogSettings) []string {
		var out []string
		for _, d := range s.Drivers() {
			out = append(out, d.Name)
		}
		return out
	}
	// Options without drivers: no driver is added, the options apply.
	write("[shim]\nx = 1\n[logging]\nmax-size = \"2k\"\nrate-lines = 5\n")
	c := testConfig(t, "-l", "k8s-file:/k")
	s, err := resolveLogSettings(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(s); !reflect.DeepEqual(got, []string{"k8s-file"}) || s.Drivers()[0].Options["max-size"] != "2048" || s.lc.RateLines != 5 {
		t.Fatalf("drivers %v options %v rate %v", got, s.Drivers()[0].Options, s.lc.RateLines)
	}
	// The file's drivers are added; an annotation's driver list replaces them.
	write("[logging]\ndrivers = [\"journald\"]\n")
	s, err = resolveLogSettings(c, nil)
	if err != nil || !reflect.DeepEqual(names(s), []string{"k8s-file", "journald"}) {
		t.Fatalf("file drivers: %v %v", err, s)
	}
	s, err = resolveLogSettings(c, map[string]string{annPrefix + "driver": "json-file"})
	if err != nil || !reflect.DeepEqual(names(s), []string{"k8s-file", "json-file"}) {
		t.Fatalf("annotation over file drivers: %v %v", err, s)
	}
	// annotation-allow from the file governs annotations.
	write("[logging]\nannotation-allow = []\n")
	if _, err = resolveLogSettings(c, map[string]string{annPrefix + "path": "/etc/x"}); err == nil || !strings.Contains(err.Error(), "only the configuration file may set") {
		t.Fatalf("path annotation with annotation-allow = []: %v", err)
	}
	// Kubernetes containers' annotations may not name host paths unless
	// the file says so.
	kube := map[string]string{"io.kubernetes.cri-o.ContainerType": "container", annPrefix + "driver": "json-file", annPrefix + "opt.json-file.path": "/etc/cron.d/x"}
	write("[logging]\nmax-size = \"2k\"\n")
	if _, err = resolveLogSettings(c, kube); err == nil || !strings.Contains(err.Error(), "only the configuration file may set") {
		t.Fatalf("path annotation of a Kubernetes container: %v", err)
	}
	write("[logging]\nannotation-allow = [\"opt.json-file.path\"]\n")
	if _, err = resolveLogSettings(c, kube); err != nil {
		t.Fatalf("path annotation of a Kubernetes container allowed by the file: %v", err)
	}
	// A bad file names itself; an explicit missing file is an error.
	write("[logging]\nmax-size = \"huge\"\n")
	if _, err = resolveLogSettings(c, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("bad file: %v", err)
	}
	t.Setenv(EnvConfig, filepath.Join(dir, "missing.toml"))
	if _, err = resolveLogSettings(c, nil); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Fatalf("missing explicit file: %v", err)
	}
}

func TestReadLogAnnotationsAndOpen(t *testing.T) {
	t.Setenv(EnvConfig, filepath.Join(t.TempDir(), "c.toml"))
	os.WriteFile(os.Getenv(EnvConfig), nil, 0o644)
	logs := t.TempDir()
	c := testConfig(t, "-l", "k8s-file:"+filepath.Join(logs, "k.log"))
	spec := `{"ociVersion": "1.0.2", "annotations": {"other": "x", "` + annPrefix + `driver": "json-file", "` +
		annPrefix + `opt.json-file.path": "` + filepath.Join(logs, "j.log") + `"}}`
	if err := os.WriteFile(filepath.Join(c.Bundle, "config.json"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := ReadLogSettings(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Annotations) != 2 {
		t.Fatalf("annotations %v: want only the two log ones", s.Annotations)
	}
	kspec := `{"annotations": {"io.kubernetes.a": "1", "io.kubernetes.b": "2", "x": "y"}}`
	kpath := filepath.Join(t.TempDir(), "k.json")
	os.WriteFile(kpath, []byte(kspec), 0o644)
	if a, err := readLogAnnotations(kpath); err != nil || len(a) != 1 || !logging.FromKubernetes(a) {
		t.Fatalf("annotations of a Kubernetes spec: %v %v, want one io.kubernetes.* kept", a, err)
	}
	// Podman sets io.kubernetes.cri-o.Created and TTY itself.
	pspec := `{"annotations": {"io.kubernetes.cri-o.Created": "1", "io.container.manager": "libpod"}}`
	os.WriteFile(kpath, []byte(pspec), 0o644)
	if a, err := readLogAnnotations(kpath); err != nil || logging.FromKubernetes(a) {
		t.Fatalf("annotations of a Podman spec: %v %v, taken for Kubernetes", a, err)
	}
	if e := (&LogSettings{Annotations: map[string]string{"io.kubernetes.a": "1"}}).env(); e != "" {
		t.Fatalf("env %q without log annotations, want none", e)
	}
	// The monitor gets them from the environment, not from config.json.
	k, v, _ := strings.Cut(s.env(), "=")
	t.Setenv(k, v)
	os.Remove(filepath.Join(c.Bundle, "config.json"))
	s2, err := MonitorLogSettings(c)
	if err != nil || !reflect.DeepEqual(s2.Drivers(), s.Drivers()) {
		t.Fatalf("monitor settings %v %+v, want %+v", err, s2, s)
	}
	reg := logging.NewRegistry()
	for name, f := range map[string]logging.Factory{k8sfile.Name: k8sfile.Factory, jsonfile.Name: jsonfile.Factory, passthrough.NoneName: passthrough.NoneFactory} {
		if err := reg.Register(name, f); err != nil {
			t.Fatal(err)
		}
	}
	if m := s.MissingDrivers(reg); len(m) != 0 {
		t.Fatalf("missing %v", m)
	}
	p, err := OpenLogs(context.Background(), c, s2, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.WriteChunk(logging.Stdout, []byte("hello\n"))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"k.log", "j.log"} {
		b, err := os.ReadFile(filepath.Join(logs, f))
		if err != nil || !strings.Contains(string(b), "hello") {
			t.Fatalf("%s: %q %v", f, b, err)
		}
	}
	s3, err := resolveLogSettings(c, map[string]string{annPrefix + "driver": "syslog"})
	if err != nil {
		t.Fatal(err)
	}
	if m := s3.MissingDrivers(reg); !reflect.DeepEqual(m, []string{"syslog"}) {
		t.Fatalf("missing %v, want [syslog]", m)
	}
	// A bad path of an added file driver fails in the first process.
	s4, err := resolveLogSettings(c, map[string]string{annPrefix + "driver": "json-file", annPrefix + "opt.json-file.path": "/nonexistent/dir/j.log"})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckLogFiles(context.Background(), c, s4, reg); err == nil || !strings.Contains(err.Error(), "json-file") {
		t.Fatalf("CheckLogFiles with a bad path: %v", err)
	}
}
