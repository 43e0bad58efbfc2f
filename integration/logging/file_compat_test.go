package logging_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

const fileDebianConmon = "/usr/bin/conmon"

// fileBundle writes an OCI bundle (runc's default spec, no terminal, the
// busybox rootfs read-only) that runs script with sh -c.
func fileBundle(t *testing.T, dir, rootfs, script string) string {
	t.Helper()
	b := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(b, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("runc", "spec", "--bundle", b).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	p := filepath.Join(b, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/bin/sh", "-c", script}
	spec["root"] = map[string]any{"path": rootfs, "readonly": true}
	data, _ = json.Marshal(spec)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// fileCompatScript writes one piece per write(2), with pauses longer than a
// monitor's read latency, so that both monitors see the same reads: the
// P/F split and the timestamp grouping depend on reads (conmon.md §3.3).
const fileCompatScript = `
p() { printf "$@"; sleep 0.2; }
e() { printf "$@" >&2; sleep 0.2; }
p 'out\n'
p 'partial'
e 'err\n'
p 'a\nb\nc\n'
p '\r\n'
p 'tail1\ntail2'
p '\n'
e 'spaces   in  line \t tab\n'
p '%s\n' "$(printf '%3000s' '' | tr ' ' x)"
p '\n\n'
e 'unicode \342\234\223 done\n'
p 'no newline at exit'
`

var fileTSRE = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{9}[+-][0-9]{2}:[0-9]{2}$`)

// fileSplitLog returns each line's text after the timestamp, and a grouping
// string: one letter per line, the same letter while the timestamp is the
// same (one read), so that per-read stamping is compared too.
func fileSplitLog(t *testing.T, path string) (lines []string, groups string, offset string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) == 0 || data[len(data)-1] != '\n' {
		t.Fatalf("%s does not end with a newline: %q", path, data)
	}
	prev, g := "", byte('a'-1)
	for _, l := range strings.SplitAfter(string(data), "\n") {
		if l == "" {
			continue
		}
		ts, rest, ok := strings.Cut(l, " ")
		if !ok || !fileTSRE.MatchString(ts) {
			t.Fatalf("%s: line %q has no conmon timestamp", path, l)
		}
		if ts != prev {
			g++
			prev = ts
		}
		groups += string(g)
		offset = ts[len(ts)-6:]
		lines = append(lines, rest)
	}
	return lines, groups, offset
}

// fileRunUnderConmon runs the bundle under Debian's conmon (--sync, k8s-file)
// the way CRI-O drives it, starting the container with runc once conmon has
// created it.
func fileRunUnderConmon(t *testing.T, ctx context.Context, dir, bundle, logPath string, extra ...string) {
	t.Helper()
	id := fmt.Sprintf("compat-conmon-%d", time.Now().UnixNano())
	root := filepath.Join(dir, "runc")
	pidfile := filepath.Join(dir, "pidfile")
	for _, d := range []string{root, filepath.Join(dir, "exits"), filepath.Join(dir, "sock")} {
		os.MkdirAll(d, 0o755)
	}
	cmd := exec.CommandContext(ctx, fileDebianConmon,
		"--api-version", "1", "-c", id, "-u", id, "-r", testutil.NeedCommand(t, "runc"),
		"--runtime-arg", "--root", "--runtime-arg", root,
		"-b", bundle, "-p", pidfile, "-l", "k8s-file:"+logPath,
		"--exit-dir", filepath.Join(dir, "exits"), "--socket-dir-path", filepath.Join(dir, "sock"),
		"--sync", "--log-level", "debug")
	cmd.Args = append(cmd.Args, extra...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("runc", "--root", root, "delete", "-f", id).Run() })
	for {
		if _, err := os.Stat(pidfile); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("conmon never created the container: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := exec.CommandContext(ctx, "runc", "--root", root, "start", id).CombinedOutput(); err != nil {
		t.Fatalf("runc start: %v: %s", err, out)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("conmon: %v: %s", err, stderr.String())
	}
}

// fileRunUnderPipeline runs the bundle with runc in the foreground, its stdout
// and stderr on pipes read by a logging.Pipeline into k8s-file.
func fileRunUnderPipeline(t *testing.T, ctx context.Context, dir, bundle, logPath string, opts ...k8sfile.Options) {
	t.Helper()
	id := fmt.Sprintf("compat-v2-%d", time.Now().UnixNano())
	root := filepath.Join(dir, "runc")
	var o k8sfile.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	o.Path = logPath
	d, err := k8sfile.New(o)
	if err != nil {
		t.Fatal(err)
	}
	p := logging.NewPipeline(logging.Metadata{ID: id}, []logging.Driver{d}, logging.PipelineOptions{})
	fileRunInto(t, ctx, p, root, bundle, id)
	if st := p.Stats(); st.WriteError.Lines != 0 || st.ReadErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// fileRunInto runs the bundle as container id with runc (state under
// root) in the foreground, its stdout and stderr on pipes read by p, and
// closes p once runc exited.
func fileRunInto(t *testing.T, ctx context.Context, p *logging.Pipeline, root, bundle, id string) {
	t.Helper()
	or, ow, _ := os.Pipe()
	er, ew, _ := os.Pipe()
	cmd := exec.CommandContext(ctx, "runc", "--root", root, "run", "--bundle", bundle, id)
	cmd.Stdout, cmd.Stderr = ow, ew
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ow.Close()
	ew.Close()
	p.ReadFrom(logging.Stdout, or)
	p.ReadFrom(logging.Stderr, er)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("runc run: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// fileCompat is a side-by-side run of conmon and a Pipeline: a busybox
// rootfs, each side's directory and its log file.
type fileCompat struct {
	ctx        context.Context
	rootfs     string
	cdir, vdir string
	clog, vlog string
}

// newFileCompat skips without root, fails without runc or Debian's conmon,
// and prepares the directories; ctx ends after 60 s or with the test.
func newFileCompat(t *testing.T) fileCompat {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	if _, err := os.Stat(fileDebianConmon); err != nil {
		t.Fatalf("%s is not installed (.ci/run installs conmon): %v", fileDebianConmon, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	base := t.TempDir()
	c := fileCompat{ctx: ctx, rootfs: testutil.BusyboxRootfs(t, filepath.Join(base, "rootfs"))}
	c.cdir, c.vdir = filepath.Join(base, "conmon"), filepath.Join(base, "v2")
	os.MkdirAll(c.cdir, 0o755)
	os.MkdirAll(c.vdir, 0o755)
	c.clog, c.vlog = filepath.Join(c.cdir, "ctr.log"), filepath.Join(c.vdir, "ctr.log")
	return c
}

// TestFileK8sByteCompatibleWithConmon runs the same container under
// Debian's conmon and under a Pipeline with k8s-file: the files must be
// identical but for the timestamps, which must have conmon's layout and
// the same grouping (one per read).
func TestFileK8sByteCompatibleWithConmon(t *testing.T) {
	c := newFileCompat(t)
	fileRunUnderConmon(t, c.ctx, c.cdir, fileBundle(t, c.cdir, c.rootfs, fileCompatScript), c.clog)
	fileRunUnderPipeline(t, c.ctx, c.vdir, fileBundle(t, c.vdir, c.rootfs, fileCompatScript), c.vlog)

	cl, cg, co := fileSplitLog(t, c.clog)
	vl, vg, vo := fileSplitLog(t, c.vlog)
	if strings.Join(cl, "") != strings.Join(vl, "") {
		t.Fatalf("lines differ:\nconmon:\n%s\nconmon-v2:\n%s", strings.Join(cl, ""), strings.Join(vl, ""))
	}
	if cg != vg {
		t.Errorf("timestamp grouping differs: conmon %s, conmon-v2 %s", cg, vg)
	}
	if co != vo {
		t.Errorf("offset differs: conmon %s, conmon-v2 %s", co, vo)
	}
	t.Logf("%d identical lines, grouping %s:\n%s", len(cl), cg, strings.Join(cl, ""))
}

// TestFileK8sTruncateLikeConmon: conmon's --log-size-max and k8s-file's
// truncate mode leave the same lines in the file.
func TestFileK8sTruncateLikeConmon(t *testing.T) {
	c := newFileCompat(t)
	// 60 lines of 65 bytes in the file with max 1000, one write each.
	script := `for i in $(seq 10 69); do echo "line $i $(printf '%0.sx' $(seq 1 2))"; done`
	fileRunUnderConmon(t, c.ctx, c.cdir, fileBundle(t, c.cdir, c.rootfs, script), c.clog, "--log-size-max", "1000")
	fileRunUnderPipeline(t, c.ctx, c.vdir, fileBundle(t, c.vdir, c.rootfs, script), c.vlog, k8sfile.Options{MaxSize: 1000, Truncate: true})
	cl, _, _ := fileSplitLog(t, c.clog)
	vl, _, _ := fileSplitLog(t, c.vlog)
	if strings.Join(cl, "") != strings.Join(vl, "") {
		t.Fatalf("files differ:\nconmon:\n%s\nconmon-v2:\n%s", strings.Join(cl, ""), strings.Join(vl, ""))
	}
	t.Logf("both keep %d lines:\n%s", len(cl), strings.Join(cl, ""))
}
