package podman

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ann is a Podman --annotation for one conmon-v2 log option.
func ann(opt, value string) []string {
	return []string{"--annotation", "io.containers.conmon-v2.log." + opt + "=" + value}
}

func annotations(kv ...string) []string {
	var out []string
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, ann(kv[i], kv[i+1])...)
	}
	return out
}

// TestLogAnnotations: `podman run --annotation io.containers.conmon-v2.log.*`
// reaches the drop-in through the bundle's config.json and adds drivers
// and options, while Podman's own k8s-file (what `podman logs` reads)
// stays.
func TestLogAnnotations(t *testing.T) {
	e := newEnv(t)
	lines := "i=0; while [ $i -lt 100 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done"

	t.Run("json-file-rotation", func(t *testing.T) {
		jpath := filepath.Join(t.TempDir(), "ctr.json")
		id := e.detached(annotations("driver", "json-file", "opt.json-file.path", jpath,
			"opt.json-file.max-size", "1k", "opt.json-file.max-files", "3"), "sh", "-c", lines)
		e.ok("wait", id)
		for _, p := range []string{jpath, jpath + ".1", jpath + ".2"} {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("rotated json-file: %v", err)
			}
			if fi.Size() > 1024 {
				t.Fatalf("%s is %d bytes, max-size is 1k", p, fi.Size())
			}
		}
		if _, err := os.Stat(jpath + ".3"); err == nil {
			t.Fatalf("%s.3 exists: max-files is 3", jpath)
		}
		b, _ := os.ReadFile(jpath)
		if !strings.Contains(string(b), `"log":"line-99-xxxxxxxxxxxxxxxxxxxx\n","stream":"stdout"`) {
			t.Fatalf("json-file does not end with the last line: %q", b)
		}
		// Podman's k8s-file is untouched by the json-file's options:
		// `podman logs` has every line.
		got := e.ok("logs", id)
		if n := strings.Count(got, "\n"); n != 100 || !strings.HasSuffix(got, "line-99-xxxxxxxxxxxxxxxxxxxx\n") {
			t.Fatalf("podman logs: %d lines, ends %q", n, got[max(0, len(got)-60):])
		}
	})

	t.Run("syslog-hands-over-to-full", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		addr := "udp://" + pc.LocalAddr().String()
		r := e.podman(nil, append([]string{"run", "-d"}, e.runArgs(annotations("driver", "syslog", "opt.syslog.address", addr, "tag", "web-{{.Name}}"),
			"sh", "-c", "echo to-syslog; sleep 3")...)...)
		if r.code != 0 {
			t.Fatalf("podman run: exit %d stderr %q", r.code, r.stderr)
		}
		id := strings.TrimSpace(r.stdout)
		pid := e.inspect(id, "{{.State.ConmonPid}}")
		exe, err := os.Readlink("/proc/" + pid + "/exe")
		if err != nil || exe != e.conmon+"-full" {
			t.Fatalf("monitor %s (%v), want %s-full: conmon-v2 hands syslog over", exe, err, e.conmon)
		}
		_ = pc.SetReadDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 4096)
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no syslog message: %v", err)
		}
		if msg := string(buf[:n]); !strings.Contains(msg, "to-syslog") || !strings.Contains(msg, " web-") {
			t.Fatalf("syslog message %q: want the line, tagged web-<name>", msg)
		}
		e.ok("wait", id)
		if got := e.ok("logs", id); got != "to-syslog\n" {
			t.Fatalf("podman logs %q", got)
		}
	})

	t.Run("k8s-file-rotation", func(t *testing.T) {
		// Options without a driver apply to Podman's own k8s-file where
		// its flags say nothing (Podman passes no --log-size-max here).
		id := e.detached(annotations("max-size", "1k", "max-files", "2"), "sh", "-c", lines)
		e.ok("wait", id)
		path := e.inspect(id, "{{.HostConfig.LogConfig.Path}}")
		for _, p := range []string{path, path + ".1"} {
			if fi, err := os.Stat(p); err != nil || fi.Size() > 1024 {
				t.Fatalf("%s: %v (size must be at most 1k)", p, err)
			}
		}
		if got := e.ok("logs", id); !strings.HasSuffix(got, "line-99-xxxxxxxxxxxxxxxxxxxx\n") {
			t.Fatalf("podman logs ends %q", got[max(0, len(got)-60):])
		}
	})

	t.Run("bad-annotation", func(t *testing.T) {
		r := e.run(nil, ann("max-size", "lots"), "echo", "never")
		if r.code == 0 || strings.Contains(r.stdout, "never") {
			t.Fatalf("run with a bad annotation: exit %d stdout %q", r.code, r.stdout)
		}
		want := `[conmon:e]: annotation io.containers.conmon-v2.log.max-size: log option max-size="lots"`
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("stderr %q, want it to contain %q", r.stderr, want)
		}
		r = e.run(nil, ann("opt.nosuch.x", "1"), "echo", "never")
		if r.code == 0 || !strings.Contains(r.stderr, `driver "nosuch" is not enabled`) {
			t.Fatalf("run with options of a driver not enabled: exit %d stderr %q", r.code, r.stderr)
		}
	})
}
