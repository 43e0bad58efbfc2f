package journald

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/loggingtest"
)

// fakeJournal is a datagram socket that decodes the native protocol, the
// way journald does, including entries passed in a memfd.
type fakeJournal struct {
	path string
	fd   int
}

func newFakeJournal(t *testing.T) *fakeJournal {
	t.Helper()
	path := filepath.Join(t.TempDir(), "socket")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	t.Cleanup(func() { unix.Close(fd) })
	return &fakeJournal{path: path, fd: fd}
}

type entry map[string]string

func (j *fakeJournal) recv(t *testing.T) entry {
	t.Helper()
	buf := make([]byte, 1<<20)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(j.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	data := buf[:n]
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fds[0]), "memfd")
		defer f.Close()
		seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
		if err != nil || seals&unix.F_SEAL_WRITE == 0 {
			t.Fatalf("memfd not sealed: seals=%#x err=%v", seals, err)
		}
		data = make([]byte, 0, 1<<20)
		b := make([]byte, 1<<16)
		for {
			n, err := unix.Pread(fds[0], b, int64(len(data)))
			if n <= 0 || err != nil {
				break
			}
			data = append(data, b[:n]...)
		}
		data = append([]byte("_MEMFD=1\n"), data...)
	}
	e, err := parseEntry(data)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// parseEntry decodes the native protocol; a repeated field is an error here
// because the driver never repeats one.
func parseEntry(b []byte) (entry, error) {
	e := entry{}
	for len(b) > 0 {
		nl := strings.IndexByte(string(b), '\n')
		if nl < 0 {
			return nil, fmt.Errorf("field without newline: %q", b)
		}
		line := string(b[:nl])
		var name, value string
		if eq := strings.IndexByte(line, '='); eq >= 0 {
			name, value = line[:eq], line[eq+1:]
			b = b[nl+1:]
		} else {
			name = line
			b = b[nl+1:]
			if len(b) < 8 {
				return nil, fmt.Errorf("short binary field %s", name)
			}
			n := binary.LittleEndian.Uint64(b)
			b = b[8:]
			if uint64(len(b)) < n+1 || b[n] != '\n' {
				return nil, fmt.Errorf("bad binary field %s", name)
			}
			value = string(b[:n])
			b = b[n+1:]
		}
		if _, dup := e[name]; dup {
			return nil, fmt.Errorf("field %s repeated", name)
		}
		e[name] = value
	}
	return e, nil
}

const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func open(t *testing.T, j *fakeJournal, meta logging.Metadata, opts map[string]string) logging.Driver {
	t.Helper()
	if opts == nil {
		opts = map[string]string{}
	}
	opts["socket"] = j.path
	d, err := New(context.Background(), logging.Info{Meta: meta, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestFields(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta logging.Metadata
		want entry
	}{
		{
			name: "id only",
			meta: logging.Metadata{ID: cid},
			want: entry{"CONTAINER_ID": cid[:12], "CONTAINER_ID_FULL": cid, "SYSLOG_IDENTIFIER": cid[:12]},
		},
		{
			name: "name",
			meta: logging.Metadata{ID: cid, Name: "web"},
			want: entry{"CONTAINER_ID": cid[:12], "CONTAINER_ID_FULL": cid, "CONTAINER_NAME": "web", "SYSLOG_IDENTIFIER": "web"},
		},
		{
			name: "tag and labels",
			meta: logging.Metadata{ID: cid, Name: "web", Tag: "tg", Labels: map[string]string{"app.kubernetes/io-name": "x\ny", "tier": "db"}},
			want: entry{
				"CONTAINER_ID": cid[:12], "CONTAINER_ID_FULL": cid, "CONTAINER_NAME": "web", "CONTAINER_TAG": "tg",
				"SYSLOG_IDENTIFIER": "tg", "APP_KUBERNETES_IO_NAME": "x\ny", "TIER": "db",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newFakeJournal(t)
			d := open(t, j, tc.meta, nil)
			defer d.Close()
			if err := d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("hello")}); err != nil {
				t.Fatal(err)
			}
			got := j.recv(t)
			tc.want["MESSAGE"] = "hello\n"
			tc.want["PRIORITY"] = "6"
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestMessages(t *testing.T) {
	type rec struct {
		stream  logging.Stream
		line    string
		partial bool
	}
	long := strings.Repeat("x", 17<<20) // over any datagram: the send buffer is at most 2*8 MiB
	for _, tc := range []struct {
		name string
		opts map[string]string
		in   []rec
		want []entry // only MESSAGE, PRIORITY, CONTAINER_PARTIAL_MESSAGE, _MEMFD
	}{
		{
			name: "stdout and stderr priorities",
			in:   []rec{{logging.Stdout, "a", false}, {logging.Stderr, "b", false}},
			want: []entry{{"MESSAGE": "a\n", "PRIORITY": "6"}, {"MESSAGE": "b\n", "PRIORITY": "3"}},
		},
		{
			name: "sd-daemon prefix",
			in:   []rec{{logging.Stdout, "<4>warn", false}, {logging.Stderr, "<7>dbg", false}, {logging.Stdout, "<9>no", false}, {logging.Stdout, "<", false}},
			want: []entry{{"MESSAGE": "warn\n", "PRIORITY": "4"}, {"MESSAGE": "dbg\n", "PRIORITY": "7"}, {"MESSAGE": "<9>no\n", "PRIORITY": "6"}, {"MESSAGE": "<\n", "PRIORITY": "6"}},
		},
		{
			name: "partials are reassembled per stream",
			in:   []rec{{logging.Stdout, "ab", true}, {logging.Stderr, "e", false}, {logging.Stdout, "cd", true}, {logging.Stdout, "ef", false}},
			want: []entry{{"MESSAGE": "e\n", "PRIORITY": "3"}, {"MESSAGE": "abcdef\n", "PRIORITY": "6"}},
		},
		{
			name: "no reassembly, unmarked",
			opts: map[string]string{"max-line-size": "0"},
			in:   []rec{{logging.Stdout, "ab", true}, {logging.Stdout, "c", false}},
			want: []entry{{"MESSAGE": "ab", "PRIORITY": "6"}, {"MESSAGE": "c\n", "PRIORITY": "6"}},
		},
		{
			name: "no reassembly, marked",
			opts: map[string]string{"max-line-size": "0", "partial-message": "true"},
			in:   []rec{{logging.Stdout, "ab", true}, {logging.Stdout, "c", false}},
			want: []entry{{"MESSAGE": "ab", "PRIORITY": "6", "CONTAINER_PARTIAL_MESSAGE": "true"}, {"MESSAGE": "c\n", "PRIORITY": "6"}},
		},
		{
			name: "limit cuts a line",
			opts: map[string]string{"max-line-size": "4", "partial-message": "true"},
			in:   []rec{{logging.Stdout, "ab", true}, {logging.Stdout, "cd", true}, {logging.Stdout, "e", false}},
			want: []entry{{"MESSAGE": "abcd", "PRIORITY": "6", "CONTAINER_PARTIAL_MESSAGE": "true"}, {"MESSAGE": "e\n", "PRIORITY": "6"}},
		},
		{
			name: "newline inside a record",
			in:   []rec{{logging.Stdout, "a\nb", false}},
			want: []entry{{"MESSAGE": "a\nb\n", "PRIORITY": "6"}},
		},
		{
			name: "pending partial flushed on close",
			opts: map[string]string{"partial-message": "true"},
			in:   []rec{{logging.Stdout, "tail", true}},
			want: []entry{{"MESSAGE": "tail", "PRIORITY": "6", "CONTAINER_PARTIAL_MESSAGE": "true"}},
		},
		{
			name: "large entry through memfd",
			opts: map[string]string{"max-line-size": "33554432"},
			in:   []rec{{logging.Stdout, long[:1<<20], true}, {logging.Stdout, long[1<<20:], false}},
			want: []entry{{"MESSAGE": long + "\n", "PRIORITY": "6", "_MEMFD": "1"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newFakeJournal(t)
			d := open(t, j, logging.Metadata{ID: cid}, tc.opts)
			for _, r := range tc.in {
				if err := d.Write(&logging.Record{Time: time.Now(), Stream: r.stream, Line: []byte(r.line), Partial: r.partial}); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			for i, w := range tc.want {
				got := j.recv(t)
				for _, k := range []string{"MESSAGE", "PRIORITY", "CONTAINER_PARTIAL_MESSAGE", "_MEMFD"} {
					if got[k] != w[k] {
						g, ww := got[k], w[k]
						if len(g) > 40 || len(ww) > 40 {
							g, ww = fmt.Sprintf("%d bytes", len(g)), fmt.Sprintf("%d bytes", len(ww))
						}
						t.Errorf("entry %d: %s = %q, want %q", i, k, g, ww)
					}
				}
			}
			// Nothing more.
			tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
			_ = unix.SetsockoptTimeval(j.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			if n, _, _ := unix.Recvfrom(j.fd, make([]byte, 64), 0); n > 0 {
				t.Errorf("unexpected extra entry")
			}
		})
	}
}

func TestBadConfig(t *testing.T) {
	j := newFakeJournal(t)
	notSock := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notSock, nil, 0o600)
	for _, tc := range []struct {
		name string
		meta logging.Metadata
		opts map[string]string
		want string
	}{
		{"unknown option", logging.Metadata{ID: cid}, map[string]string{"socket": j.path, "colour": "red"}, `"colour"`},
		{"bad size", logging.Metadata{ID: cid}, map[string]string{"socket": j.path, "max-line-size": "-1"}, "max-line-size"},
		{"bad bool", logging.Metadata{ID: cid}, map[string]string{"socket": j.path, "partial-message": "maybe"}, "partial-message"},
		{"no id", logging.Metadata{}, map[string]string{"socket": j.path}, "container ID"},
		{"missing socket", logging.Metadata{ID: cid}, map[string]string{"socket": notSock + "x"}, notSock + "x"},
		{"not a socket", logging.Metadata{ID: cid}, map[string]string{"socket": notSock}, notSock},
		{"reserved label", logging.Metadata{ID: cid, Labels: map[string]string{"priority": "1"}}, map[string]string{"socket": j.path}, `"priority"`},
		{"empty label", logging.Metadata{ID: cid, Labels: map[string]string{"__": "1"}}, map[string]string{"socket": j.path}, `"__"`},
		{"colliding labels", logging.Metadata{ID: cid, Labels: map[string]string{"a.b": "1", "a-b": "2"}}, map[string]string{"socket": j.path}, "A_B"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(context.Background(), logging.Info{Meta: tc.meta, Options: tc.opts})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %s", err, tc.want)
			}
			if tc.name != "missing socket" && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("err %v is not InvalidArgument", err)
			}
		})
	}
}

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{
		"app":       "APP",
		"io.k8s/ns": "IO_K8S_NS",
		"_secret":   "SECRET",
		"9lives":    "L_9LIVES",
		"Ünï":       "N__", // one _ per byte of a multi-byte rune
	} {
		got, err := FieldName(in)
		if err != nil || got != want {
			t.Errorf("FieldName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	long, _ := FieldName(strings.Repeat("a", 100))
	if len(long) != 64 {
		t.Errorf("long name has %d bytes", len(long))
	}
}

func TestConcurrentWrites(t *testing.T) {
	j := newFakeJournal(t)
	d := open(t, j, logging.Metadata{ID: cid}, nil)
	const writers, each = 8, 50
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < writers*each; i++ {
			if e := j.recv(t); !strings.HasPrefix(e["MESSAGE"], "w") {
				t.Errorf("bad entry %q", e)
				return
			}
		}
	}()
	errc := make(chan error, writers)
	for w := 0; w < writers; w++ {
		go func() {
			var err error
			for i := 0; i < each && err == nil; i++ {
				err = d.Write(&logging.Record{Stream: logging.Stream(1 + w%2), Line: []byte(fmt.Sprintf("w%d-%d", w, i))})
			}
			errc <- err
		}()
	}
	for w := 0; w < writers; w++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("late")}); err == nil {
		t.Error("write after close succeeded")
	}
}

func TestConformance(t *testing.T) {
	loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		j := newFakeJournal(t)
		d := open(t, j, logging.Metadata{ID: cid}, nil)
		// Drain the socket as journald does: a full receive queue would
		// block the writers.
		var mu sync.Mutex
		var got []logging.Record
		done := make(chan struct{})
		stop := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				e, ok := j.tryRecv(t, 20*time.Millisecond)
				if !ok {
					continue
				}
				r := logging.Record{Stream: logging.Stdout}
				if e["PRIORITY"] == "3" {
					r.Stream = logging.Stderr
				}
				msg, full := strings.CutSuffix(e["MESSAGE"], "\n")
				r.Line, r.Partial = []byte(msg), !full
				mu.Lock()
				got = append(got, r)
				mu.Unlock()
			}
		}()
		t.Cleanup(func() { close(stop); <-done })
		return d, func() []logging.Record {
			mu.Lock()
			defer mu.Unlock()
			return append([]logging.Record(nil), got...)
		}
	})
}

// tryRecv returns the next entry if one arrives within wait.
func (j *fakeJournal) tryRecv(t *testing.T, wait time.Duration) (entry, bool) {
	var pfd = []unix.PollFd{{Fd: int32(j.fd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(pfd, int(wait.Milliseconds())); n <= 0 {
		return nil, false
	}
	return j.recv(t), true
}

// TestCommonOptionsIgnored: the file options every driver receives from a
// logging.Config are not journald's business.
func TestCommonOptionsIgnored(t *testing.T) {
	j := newFakeJournal(t)
	d := open(t, j, logging.Metadata{ID: cid}, map[string]string{logging.OptPath: "/var/log/ctr.log", logging.OptMaxSize: "10"})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWriteAllocs: the hot path allocates nothing per line.
func TestWriteAllocs(t *testing.T) {
	j := newFakeJournal(t)
	d := open(t, j, logging.Metadata{ID: cid, Name: "n"}, nil)
	defer d.Close()
	rec := &logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte("a line of container output")}
	drain := func() {
		for {
			if _, ok := j.tryRecv(t, 0); !ok {
				return
			}
		}
	}
	d.Write(rec) // warm the buffer
	drain()
	allocs := testing.AllocsPerRun(5, func() { d.Write(rec) })
	drain()
	if allocs > 0 {
		t.Errorf("Write allocates %.1f times per line", allocs)
	}
}

// BenchmarkWrite: 80-byte lines to a socket drained by a reader.
func BenchmarkWrite(b *testing.B) {
	path := filepath.Join(b.TempDir(), "socket")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		b.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1<<16)
		for {
			if _, _, err := unix.Recvfrom(fd, buf, 0); err != nil && !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
	d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: cid, Name: "bench"}, Options: map[string]string{"socket": path}})
	if err != nil {
		b.Fatal(err)
	}
	rec := &logging.Record{Stream: logging.Stdout, Line: []byte(strings.Repeat("x", 79))}
	b.SetBytes(80)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Write(rec); err != nil {
			b.Fatal(err)
		}
	}
	d.Close()
	unix.Shutdown(fd, unix.SHUT_RDWR)
	unix.Close(fd)
}
