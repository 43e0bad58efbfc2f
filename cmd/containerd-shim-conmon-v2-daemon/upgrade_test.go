package main

import (
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/service"
)

// openFDs returns n open descriptors (pipe ends), closed at the end of the
// test.
func openFDs(t *testing.T, n int) []int {
	t.Helper()
	var fds []int
	for len(fds) < n {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		fds = append(fds, p[0], p[1])
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	return fds[:n]
}

// TestHandoverEncoding: what one binary writes the next reads back
// unchanged, and a description that does not fit this process (another
// format version, a descriptor that is not open, stdio numbers) is refused
// with an error naming the problem.
func TestHandoverEncoding(t *testing.T) {
	fds := openFDs(t, 7)
	closed := openFDs(t, 1)[0] + 1000 // not open
	valid := func() *handover {
		return &handover{
			Version:    handoverVersion,
			FrozenAt:   time.Unix(100, 5).UTC(),
			StartedAt:  time.Unix(50, 0).UTC(),
			From:       "v1",
			Config:     "grouping = \"namespace\"\n",
			Group:      "",
			Listener:   fds[0],
			SocketPath: "/run/x.sock",
			Conns:      []handedConn{{FD: fds[1], Pending: []byte{0, 0, 0, 1, 0, 0, 0, 3, 1, 0, 42}}, {FD: fds[2]}},
			Tasks: []service.TaskFDs{{
				ID:    "c1",
				Init:  process.IOFDs{Stdout: fds[3], Stderr: fds[4], StdinEnded: true, LoggerPid: 4242, LoggerStdout: fds[6]},
				Execs: map[string]process.IOFDs{"e1": {Console: fds[5]}},
			}},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(h *handover)
		errSub string // "" = accepted
	}{
		{"round trip", func(*handover) {}, ""},
		{"other version", func(h *handover) { h.Version = 2 }, "version 2"},
		{"listener on stdio", func(h *handover) { h.Listener = 1 }, "listener descriptor 1"},
		{"connection not open", func(h *handover) { h.Conns[1].FD = closed }, "descriptor " + strconv.Itoa(closed)},
		{"task descriptor not open", func(h *handover) { h.Tasks[0].Init.Stdout = closed }, "descriptor " + strconv.Itoa(closed)},
		{"task descriptor on stdio", func(h *handover) { h.Tasks[0].Init.Stderr = 2 }, "descriptor 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := valid()
			tc.change(h)
			f, err := writeHandover(h)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeHandover(f)
			if tc.errSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errSub) {
					t.Fatalf("decode: %v, want an error with %q", err, tc.errSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, h) {
				t.Fatalf("decoded\n%+v\nwant\n%+v", got, h)
			}
		})
	}
}

// TestReadHandoverGarbage: a description that is not JSON is refused, and
// no variable means no handover.
func TestReadHandoverGarbage(t *testing.T) {
	t.Setenv(handoverEnv, "")
	if h, err := readHandover(); h != nil || err != nil {
		t.Fatalf("without the variable: %v %v", h, err)
	}
	f, err := os.CreateTemp(t.TempDir(), "h")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("not json")
	if _, err := decodeHandover(f); err == nil || !strings.Contains(err.Error(), "handover description") {
		t.Fatalf("garbage: %v", err)
	}
	t.Setenv(handoverEnv, "1")
	if _, err := readHandover(); err == nil || !strings.Contains(err.Error(), handoverEnv) {
		t.Fatalf("fd 1: %v", err)
	}
}
