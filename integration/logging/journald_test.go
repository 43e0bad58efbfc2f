package logging_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/journald"
)

// journaldRead returns the entries of container id in the journal
// namespace ns, waiting until n arrived.
func journaldRead(t *testing.T, ns, id string, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		// --all: journalctl elides fields over 4 KiB without it.
		out, err := exec.Command("journalctl", "--namespace="+ns, "--no-pager", "--all", "-o", "json", "CONTAINER_ID_FULL="+id).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Logf("journalctl: %s", ee.Stderr)
			}
			t.Fatal(err)
		}
		var entries []map[string]any
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			var e map[string]any
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("journalctl output: %v", err)
			}
			entries = append(entries, e)
		}
		if len(entries) >= n || time.Now().After(deadline) {
			if len(entries) != n {
				t.Fatalf("journal has %d entries for %s, want %d", len(entries), id, n)
			}
			return entries
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// journaldMessage decodes MESSAGE: journalctl prints text as a string and
// binary (or invalid UTF-8) values as an array of bytes.
func journaldMessage(t *testing.T, v any) string {
	switch m := v.(type) {
	case string:
		return m
	case []any:
		b := make([]byte, len(m))
		for i, x := range m {
			b[i] = byte(x.(float64))
		}
		return string(b)
	}
	t.Fatalf("MESSAGE of type %T", v)
	return ""
}

func randomID(t *testing.T) string {
	b := make([]byte, 32)
	f, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

func TestJournaldFieldsAndPriorities(t *testing.T) {
	j := startJournaldNamespace(t)
	id := randomID(t)
	meta := logging.Metadata{ID: id, Name: "jd-test", Tag: "jdtag", Labels: map[string]string{"io.example/team": "core"}}
	d, err := journald.New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"partial-message": "true", "socket": j.socket()}})
	if err != nil {
		t.Fatal(err)
	}
	recs := []logging.Record{
		{Stream: logging.Stdout, Line: []byte("plain out")},
		{Stream: logging.Stderr, Line: []byte("plain err")},
		{Stream: logging.Stdout, Line: []byte("<4>warning via sd-daemon prefix")},
		{Stream: logging.Stdout, Line: []byte("multi\nline")},
		{Stream: logging.Stdout, Line: []byte("long-"), Partial: true},
		{Stream: logging.Stdout, Line: []byte("line")},
		{Stream: logging.Stderr, Line: []byte("unfinished"), Partial: true},
	}
	for i := range recs {
		recs[i].Time = time.Now()
		recs[i].Meta = &meta
		if err := d.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got := journaldRead(t, j.ns, id, 6)
	want := []struct {
		msg, prio string
		partial   bool
	}{
		{"plain out\n", "6", false},
		{"plain err\n", "3", false},
		{"warning via sd-daemon prefix\n", "4", false},
		{"multi\nline\n", "6", false},
		{"long-line\n", "6", false},
		{"unfinished", "3", true},
	}
	for i, w := range want {
		e := got[i]
		if m := journaldMessage(t, e["MESSAGE"]); m != w.msg {
			t.Errorf("entry %d: MESSAGE %q, want %q", i, m, w.msg)
		}
		if e["PRIORITY"] != w.prio {
			t.Errorf("entry %d: PRIORITY %v, want %s", i, e["PRIORITY"], w.prio)
		}
		if _, p := e["CONTAINER_PARTIAL_MESSAGE"]; p != w.partial {
			t.Errorf("entry %d: partial %v, want %v", i, p, w.partial)
		}
		for k, v := range map[string]string{
			"CONTAINER_ID": id[:12], "CONTAINER_ID_FULL": id, "CONTAINER_NAME": "jd-test",
			"CONTAINER_TAG": "jdtag", "SYSLOG_IDENTIFIER": "jdtag", "IO_EXAMPLE_TEAM": "core",
		} {
			if e[k] != v {
				t.Errorf("entry %d: %s=%v, want %s", i, k, e[k], v)
			}
		}
	}
}

// TestJournaldLongLines checks that long lines stay one entry (conmon#335):
// one that fits a datagram and one large enough to need a memfd.
func TestJournaldLongLines(t *testing.T) {
	j := startJournaldNamespace(t)
	id := randomID(t)
	meta := logging.Metadata{ID: id}
	d, err := journald.New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"max-line-size": "67108864", "socket": j.socket()}})
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{100 << 10, 20 << 20}
	for _, size := range sizes {
		line := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		// As the pipeline would deliver it: 8 KiB partial records.
		for off := 0; off < len(line); off += 8192 {
			end := min(off+8192, len(line))
			if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: line[off:end], Partial: end < len(line), Meta: &meta}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got := journaldRead(t, j.ns, id, len(sizes))
	for i, size := range sizes {
		m := journaldMessage(t, got[i]["MESSAGE"])
		if len(m) != size+1 || !strings.HasPrefix(m, "0123456789abcdef") || m[size] != '\n' {
			t.Errorf("entry %d: %d bytes, want %d", i, len(m), size+1)
		}
	}
}

// journaldNamespace runs a private systemd-journald (journal namespaces,
// systemd 245+), so the tests neither depend on nor disturb the machine's
// journald: PID 1 is not systemd on CI machines, and a test may restart its
// own journald at will. It serves the journal namespace ns (socket
// /run/systemd/journal.<ns>/socket); cleanup removes its sockets and files.
type journaldNamespace struct {
	ns  string
	cmd *exec.Cmd
}

func (j *journaldNamespace) socket() string {
	return "/run/systemd/journal." + j.ns + "/socket"
}

func (j *journaldNamespace) start(t *testing.T) {
	t.Helper()
	j.cmd = exec.Command("/lib/systemd/systemd-journald", j.ns)
	j.cmd.Stdout, j.cmd.Stderr = os.Stderr, os.Stderr
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Sendmsg(fd, nil, nil, &unix.SockaddrUnix{Name: j.socket()}, 0)
		unix.Close(fd)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("journald for namespace %s did not answer within 10s: %v", j.ns, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (j *journaldNamespace) stop() {
	if j.cmd != nil {
		_ = j.cmd.Process.Signal(unix.SIGTERM)
		_ = j.cmd.Wait()
		j.cmd = nil
	}
}

func startJournaldNamespace(t *testing.T) *journaldNamespace {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "journalctl")
	j := &journaldNamespace{ns: "conmonv2test" + randomID(t)[:8]}
	t.Cleanup(func() {
		j.stop()
		os.RemoveAll("/run/systemd/journal." + j.ns)
		if id, err := os.ReadFile("/etc/machine-id"); err == nil {
			m := strings.TrimSpace(string(id))
			os.RemoveAll("/var/log/journal/" + m + "." + j.ns)
			os.RemoveAll("/run/log/journal/" + m + "." + j.ns)
		}
	})
	j.start(t)
	return j
}

// TestJournaldRestart: entries written after journald restarts reach the
// new journald without reopening the driver.
func TestJournaldRestart(t *testing.T) {
	j := startJournaldNamespace(t)
	id := randomID(t)
	meta := logging.Metadata{ID: id}
	d, err := journald.New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"socket": j.socket()}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	write := func(s string) error {
		return d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(s), Meta: &meta})
	}
	if err := write("before restart"); err != nil {
		t.Fatal(err)
	}
	j.stop()
	// The socket file is gone or refuses while journald is away: the
	// write fails (the pipeline counts it) instead of hanging.
	if err := write("while away"); err == nil {
		t.Log("write while journald is away succeeded (socket still queued it)")
	}
	j.start(t)
	if err := write("after restart"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := exec.Command("journalctl", "--namespace="+j.ns, "--no-pager", "-o", "cat", "CONTAINER_ID_FULL="+id).Output()
		if err != nil {
			t.Fatal(err)
		}
		got := string(out)
		if strings.Contains(got, "before restart\n") && strings.Contains(got, "after restart\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal holds %q, want the entries from before and after the restart", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
