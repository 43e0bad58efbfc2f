package conmon

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		args []string
		err  string
		want func(o *Options) bool
	}{
		{name: "podman prefix", args: []string{"--api-version", "1", "-c", "abc", "-u", "abc", "-r", "/bin/true", "-b", "/b", "-p", "/p", "-n", "nm", "--exit-dir", "/e", "--full-attach"},
			want: func(o *Options) bool {
				return o.APIVersion == 1 && o.CID == "abc" && o.CUUID == "abc" && o.Runtime == "/bin/true" && o.Bundle == "/b" &&
					o.ContainerPidfile == "/p" && o.Name == "nm" && o.ExitDir == "/e" && o.FullAttach && reflect.DeepEqual(o.Positional(), []string{"1"})
			}},
		{name: "equals form and arrays", args: []string{"--runtime-arg", "--log-format=json", "--runtime-arg=--log", "--log-path=k8s-file:/x", "-l", "journald", "--exit-command-arg", "a", "--exit-command-arg", "b"},
			want: func(o *Options) bool {
				return reflect.DeepEqual(o.RuntimeArgs, []string{"--log-format=json", "--log"}) &&
					reflect.DeepEqual(o.LogPaths, []string{"k8s-file:/x", "journald"}) && reflect.DeepEqual(o.ExitCommandArgs, []string{"a", "b"})
			}},
		{name: "grouped short flags take the next args", args: []string{"-ec", "x"}, want: func(o *Options) bool { return o.Exec && o.CID == "x" }},
		{name: "negative int", args: []string{"--exit-delay", "-1"}, want: func(o *Options) bool { return o.ExitDelay == -1 }},
		{name: "flag with =value", args: []string{"--api-version=1"}, want: func(o *Options) bool { return o.APIVersion == 1 }},
		{name: "hidden aliases", args: []string{"--pidfile", "/p", "--restore-arg", "x"}, want: func(o *Options) bool {
			return o.ContainerPidfile == "/p" && reflect.DeepEqual(o.RuntimeOpts, []string{"x"})
		}},
		{name: "double dash", args: []string{"-c", "x", "--", "-u", "y"}, want: func(o *Options) bool { return o.CUUID == "" }},
		{name: "2.2 options", args: []string{"--log-label", "a=b", "--log-rotate", "--log-max-files", "3", "--no-container-partial-message"},
			want: func(o *Options) bool {
				return o.LogRotate && o.LogMaxFiles == 3 && o.NoContainerPartialMsg && o.LogLabels[0] == "a=b"
			}},
		{name: "unknown", args: []string{"--foo"}, err: "conmon: option parsing failed: Unknown option --foo"},
		{name: "missing short", args: []string{"-c"}, err: "conmon: option parsing failed: Missing argument for -c"},
		{name: "missing in group", args: []string{"-cabc"}, err: "conmon: option parsing failed: Missing argument for -c"},
		{name: "missing long", args: []string{"--cid"}, err: "conmon: option parsing failed: Missing argument for --cid"},
		{name: "bad int", args: []string{"--timeout", "1.5"}, err: "conmon: option parsing failed: Cannot parse integer value \u201c1.5\u201d for --timeout"},
		{name: "int range", args: []string{"--exit-delay", "99999999999"}, err: "conmon: option parsing failed: Integer value \u201c99999999999\u201d for --exit-delay out of range"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := Parse(tc.args)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(o) {
				t.Fatalf("parsed %+v", o)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	rt := "/bin/true"
	tests := []struct {
		args []string
		err  string
	}{
		{[]string{}, "[conmon:e] Container ID not provided. Use --cid"},
		{[]string{"-c", "x", "--log-level", "bogus"}, "[conmon:e]: No such log level bogus"},
		{[]string{"-c", "x", "-e", "--restore", "r"}, "[conmon:e] Cannot use 'exec' and 'restore' at the same time"},
		{[]string{"-c", "x", "--exec-attach"}, "[conmon:e] Attach can only be specified with exec"},
		{[]string{"-c", "x", "-e", "--exec-attach"}, "[conmon:e] Attach can only be specified for a non-legacy exec session"},
		{[]string{"-c", "x"}, "[conmon:e] Container UUID not provided. Use --cuuid"},
		{[]string{"-c", "x", "-u", "y"}, "[conmon:e] Runtime path not provided. Use --runtime"},
		{[]string{"-c", "x", "-u", "y", "-r", "/nonexistent"}, "[conmon:e]: Runtime path /nonexistent is not valid No such file or directory"},
		{[]string{"-c", "x", "-u", "y", "-r", rt, "-e"}, "[conmon:e] Exec process spec path not provided. Use --exec-process-spec"},
		{[]string{"-c", "x", "-u", "y", "-r", rt, "--exit-delay", "-1"}, "[conmon:e] Delay before invoking exit command must be greater than or equal to 0"},
		{[]string{"-c", "x", "-u", "y", "-r", rt}, "[conmon:e] Log driver not provided. Use --log-path"},
		{[]string{"-c", "x", "-u", "y", "-r", rt, "-l", "foo:bar"}, "[conmon:e]: No such log driver foo"},
		{[]string{"-c", "x", "-u", "y", "-r", rt, "-l", "/a:b"}, "[conmon:e]: No such log driver /a"},
		{[]string{"-c", "x", "-u", "y", "-r", rt, "-l", "k8s-file"}, "[conmon:e]: k8s-file requires a filename"},
		{[]string{"-c", "x", "-u", "y", "-r", rt, "-l", "journald"}, "[conmon:e] Container ID must be longer than 12 characters"},
		{[]string{"-c", "x", "-u", "y", "-r", rt, "-l", filepath.Join(dir, "l"), "--log-tag", "t"}, "[conmon:e] k8s-file doesn't support --log-tag"},
	}
	for _, tc := range tests {
		o, err := Parse(tc.args)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Validate(o)
		if err == nil || err.Error() != tc.err {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.err)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%v: %v is not classified InvalidArgument", tc.args, err)
		}
	}
}

func TestLogDrivers(t *testing.T) {
	rt := "/bin/true"
	cid := strings.Repeat("a", 64)
	o, err := Parse([]string{"-c", cid, "-u", "u", "-r", rt, "-l", "/first", "-l", "k8s-file:/a:b", "-l", "journald:",
		"-l", "none", "-l", "syslog:udp://127.0.0.1:514", "-l", "fluentd:localhost:24224", "-l", "json-file:/j",
		"--log-size-max", "1000", "--log-global-size-max", "5000", "--no-sync-log", "--no-container-partial-message"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Validate(o)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.K8sFile != "/a:b" {
		t.Fatalf("k8s-file %q: the last one wins and keeps its colon", cfg.K8sFile)
	}
	got, err := LogDrivers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []LogDriver{
		{Name: "k8s-file", Options: map[string]string{"path": "/a:b", "max-size": "1000", "truncate": "true", "global-size-max": "5000", "fsync": "none"}},
		{Name: "journald", Options: map[string]string{"partial-message": "false"}},
		{Name: "syslog", Options: map[string]string{"address": "udp://127.0.0.1:514"}},
		{Name: "fluentd", Options: map[string]string{"address": "localhost:24224"}},
		{Name: "json-file", Options: map[string]string{"path": "/j", "max-size": "1000", "truncate": "true", "global-size-max": "5000", "fsync": "none"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("drivers\n got %+v\nwant %+v", got, want)
	}
	o2, _ := Parse([]string{"-c", cid, "-u", "u", "-r", rt, "-l", "binary:/usr/libexec/conmon-v2/loggers/x", "-l", "plugin:unix:///run/conmon-v2/log-plugins/p.sock", "-l", "plugin:/usr/libexec/conmon-v2/loggers/p"})
	cfg2, err := Validate(o2)
	if err != nil {
		t.Fatal(err)
	}
	got2, _ := LogDrivers(cfg2)
	want2 := []LogDriver{
		{Name: "binary", Options: map[string]string{"path": "/usr/libexec/conmon-v2/loggers/x"}},
		{Name: "plugin", Options: map[string]string{"socket": "/run/conmon-v2/log-plugins/p.sock"}},
		{Name: "plugin", Options: map[string]string{"path": "/usr/libexec/conmon-v2/loggers/p"}},
	}
	if !reflect.DeepEqual(got2, want2) {
		t.Fatalf("drivers\n got %+v\nwant %+v", got2, want2)
	}
	o3, _ := Parse([]string{"-c", cid, "-u", "u", "-r", rt, "-l", "binary"})
	if _, err := Validate(o3); err == nil || err.Error() != "[conmon:e]: binary requires a program path" {
		t.Fatalf("-l binary: %v", err)
	}
	o.LogRotate, o.LogMaxFiles = true, 3
	got, _ = LogDrivers(cfg)
	if got[0].Options["max-files"] != "4" || got[0].Options["truncate"] != "" {
		t.Fatalf("--log-rotate --log-max-files 3: %v", got[0].Options)
	}
}

func TestSyncMessage(t *testing.T) {
	tests := []struct {
		key, msg string
		n        int
		want     string
	}{
		{"data", "", 10614, "{\"data\": 10614}\n"},
		{"pid", "", 32022, "{\"pid\": 32022}\n"},
		{"exit_code", "command timed out", -1, "{\"exit_code\": -1, \"message\": \"command timed out\"}\n"},
		{"data", "a\"b\\c\nd\te\x01\x1f\x7f\xc3\xa9", -1, "{\"data\": -1, \"message\": \"a\\\"b\\\\c\\nd\\te\\u0001\x1f\\u007f\xc3\xa9\"}\n"},
	}
	for _, tc := range tests {
		if got := string(SyncMessage(tc.key, tc.n, tc.msg)); got != tc.want {
			t.Errorf("SyncMessage(%q, %d, %q) = %q, want %q", tc.key, tc.n, tc.msg, got, tc.want)
		}
	}
	keys := map[string]*Options{"data": {APIVersion: 1, Exec: true}, "exit_code": {Exec: true}, "pid": {}}
	for want, o := range keys {
		if got := SyncKey(o); got != want {
			t.Errorf("SyncKey(%+v) = %s, want %s", o, got, want)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	if got := VersionText("abc"); got != "conmon version 2.1.6\ncommit: abc\n" {
		t.Fatalf("version %q", got)
	}
	h := HelpText()
	for _, s := range []string{"--log-global-size-max", "-c, --cid", "--api-version"} {
		if !strings.Contains(h, s) {
			t.Fatalf("help lacks %s", s)
		}
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "exit")
	if err := WriteFileAtomic(p, []byte("42"), 0o666); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	ents, _ := os.ReadDir(dir)
	if string(b) != "42" || len(ents) != 1 {
		t.Fatalf("content %q, %d files (temp file left?)", b, len(ents))
	}
}

type recordingHandler struct {
	mu      sync.Mutex
	resizes [][2]uint16
	reopens int
}

func (r *recordingHandler) Resize(h, w uint16) {
	r.mu.Lock()
	r.resizes = append(r.resizes, [2]uint16{h, w})
	r.mu.Unlock()
}

func (r *recordingHandler) ReopenLogs() {
	r.mu.Lock()
	r.reopens++
	r.mu.Unlock()
}

func TestCtlSeveralLinesPerRead(t *testing.T) {
	dir := t.TempDir()
	h := &recordingHandler{}
	c, err := newCtlFifos(dir, h, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := os.OpenFile(filepath.Join(dir, "ctl"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Three messages in one write, the last split across two writes.
	if _, err := w.WriteString("1 40 100\n2 0 0\n1 5"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := w.WriteString("0 60\nbogus\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.mu.Lock()
		done := len(h.resizes) == 2 && h.reopens == 1
		h.mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resizes %v, reopens %d", h.resizes, h.reopens)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if want := [][2]uint16{{40, 100}, {50, 60}}; !reflect.DeepEqual(h.resizes, want) {
		t.Fatalf("resizes %v, want %v", h.resizes, want)
	}
	for _, name := range []string{"ctl", "winsz"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
			t.Fatalf("%s is not a FIFO: %v", name, err)
		}
	}
}

type bufStdin struct {
	mu     sync.Mutex
	data   []byte
	closed bool
}

func (b *bufStdin) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.data = append(b.data, p...)
	return len(p), nil
}

func (b *bufStdin) CloseStdin() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
}

func TestAttachFramingAndSlowClient(t *testing.T) {
	dir := t.TempDir()
	in := &bufStdin{}
	s, err := newAttachServer(dir, "", "", true, in, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.stallGrace = 300 * time.Millisecond
	dial := func() *net.UnixConn {
		c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: filepath.Join(dir, "attach"), Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	slow := dial() // never reads
	fast := dial()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.clients)
		s.mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("clients not accepted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := make(chan []string, 1)
	go func() {
		var frames []string
		buf := make([]byte, 8193)
		for {
			n, err := fast.Read(buf)
			if err != nil || n == 0 {
				break
			}
			frames = append(frames, string(buf[:n]))
		}
		got <- frames
	}()
	fast.Write([]byte("input"))
	fast.CloseWrite()
	for deadline := time.Now().Add(5 * time.Second); ; {
		in.mu.Lock()
		ok := string(in.data) == "input" && in.closed
		in.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stdin got %q, closed %v", in.data, in.closed)
		}
		time.Sleep(5 * time.Millisecond)
	}
	big := strings.Repeat("x", 20000)
	s.Broadcast(attachStdout, []byte(big))
	s.Broadcast(attachStderr, []byte("err\n"))
	// Enough output to overflow the slow client's queue: Broadcast waits
	// one grace for it, then drops it and goes on.
	done := make(chan struct{})
	go func() {
		chunk := []byte(strings.Repeat("y", 8192))
		for i := 0; i < 4*attachQueueBytes/8192; i++ {
			s.Broadcast(attachStdout, chunk)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Broadcast blocked on a client that does not read")
	}
	s.Close(2 * time.Second)
	s.Unlink()
	frames := <-got
	if len(frames) < 4 || frames[0] != "\x02"+big[:8192] || frames[1] != "\x02"+big[:8192] || frames[2] != "\x02"+big[:20000-16384] || frames[3] != "\x03err\n" {
		t.Fatalf("first frames: %d frames, lengths %d %d %d", len(frames), len(frames[0]), len(frames[1]), len(frames[2]))
	}
	slow.Close()
	if _, err := os.Stat(filepath.Join(dir, "attach")); !os.IsNotExist(err) {
		t.Fatalf("attach socket left behind: %v", err)
	}
}

// A client that reads slowly but steadily is never dropped: the output
// waits for it (conmon's behaviour for podman run | slow-reader), so it gets
// every byte even though far more than its queue's budget goes through.
func TestAttachSlowReaderGetsEverything(t *testing.T) {
	dir := t.TempDir()
	s, err := newAttachServer(dir, "", "", true, &bufStdin{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.stallGrace = 2 * time.Second
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: filepath.Join(dir, "attach"), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	total := 3*attachQueueBytes + 12345
	got := make(chan int, 1)
	go func() {
		n, buf := 0, make([]byte, 8193)
		for i := 0; ; i++ {
			m, err := c.Read(buf)
			if err != nil || m == 0 {
				break
			}
			n += m - 1
			if i%64 == 0 {
				time.Sleep(time.Millisecond) // slow, but always making progress
			}
		}
		got <- n
	}()
	chunk := []byte(strings.Repeat("z", 8192))
	for sent := 0; sent < total; {
		n := min(len(chunk), total-sent)
		s.Broadcast(attachStdout, chunk[:n])
		sent += n
	}
	s.Close(5 * time.Second)
	s.Unlink()
	select {
	case n := <-got:
		if n != total {
			t.Fatalf("slow reader got %d bytes, want %d", n, total)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("slow reader never finished")
	}
}

func TestNotifyProxy(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "notify"), 0o755); err != nil {
		t.Fatal(err)
	}
	hostPath := filepath.Join(dir, "host.sock")
	host, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: hostPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	p, err := newNotifyProxy(dir, hostPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: filepath.Join(dir, "notify", "notify.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("FDSTORE=1")); err != nil { // nothing to forward
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("READY=1\nMAINPID=7\nSTATUS=serving")); err != nil {
		t.Fatal(err)
	}
	_ = host.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	n, _, err := host.ReadFromUnix(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "READY=1\nSTATUS=serving" {
		t.Fatalf("host got %q", got)
	}
}

// TestAttachClientBeforeOutput: a client that connected before the output
// (or before a pause in it) gets that output, whether acceptLoop or
// Broadcast/AcceptPending accepted it.
func TestAttachClientBeforeOutput(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prime   bool // output before the client connects
		pending bool // the caller calls AcceptPending (exec attach)
	}{
		{"first output", false, false},
		{"after a quiet spell", true, false},
		{"accept pending", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := newAttachServer(dir, "", "", true, nil, false, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Unlink()
			if tc.prime {
				s.Broadcast(attachStdout, []byte("before\n"))
			}
			c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: filepath.Join(dir, "attach"), Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tc.pending {
				s.AcceptPending()
			} else {
				time.Sleep(2 * attachQuiet)
			}
			s.Broadcast(attachStdout, []byte("after\n"))
			s.Close(5 * time.Second)
			buf := make([]byte, 8193)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(buf[:n]); got != "\x02after\n" {
				t.Fatalf("client got %q, want the output after its connect", got)
			}
		})
	}
}
