package conmon

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// FuzzParse: conmon's command line, NUL-separated, is parsed and
// validated without a panic; every failure is a *ParseError or a
// *UsageError (what main prints in conmon's words).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"--cid\x00abc\x00--cuuid\x00u\x00--runtime\x00/bin/true\x00--log-path\x00k8s-file:/tmp/x.log",
		"-c\x00abc\x00-u\x00u\x00-r\x00/bin/true\x00-l\x00journald:\x00--log-size-max=-1",
		"--api-version\x001\x00-e\x00--exec-attach\x00--exec-process-spec\x00/x\x00-c\x00a\x00-r\x00/bin/true\x00-l\x00none",
		"-it\x00-s\x00--exit-delay\x000x7fffffff\x00--log-level=trace\x00--\x00x",
		"--log-size-max\x0099999999999999999999\x00--help",
		"-\x00--\x00---\x00--=\x00-c",
		"--socket-dir-path\x00\x00--log-path\x00passthrough:\x00--log-tag\x00{{.x}}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		o, err := Parse(args)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse: %T %v", err, err)
			}
			return
		}
		if _, err := Validate(o); err != nil {
			var ue *UsageError
			if !errors.As(err, &ue) {
				t.Fatalf("Validate: %T %v", err, err)
			}
		}
	})
}

type ctlRecorder struct {
	mu      sync.Mutex
	resizes int
	reopens int
}

func (r *ctlRecorder) Resize(h, w uint16) { r.mu.Lock(); r.resizes++; r.mu.Unlock() }
func (r *ctlRecorder) ReopenLogs()        { r.mu.Lock(); r.reopens++; r.mu.Unlock() }

// FuzzCtl: bytes written to the ctl FIFO, in any cuts, are handled line by
// line without a panic; a stream of well-formed lines is acted on once per
// line; the reader stops at end of file.
func FuzzCtl(f *testing.F) {
	for _, s := range []string{
		"1 24 80\n", "2 0 0\n", "1 24 80\n2 0 0\n1 1 1\n", "1 24", " 80\n", "9 9 9\n",
		"1 -1 99999999\n", "x y z\n", "1 2\n", "\n\n\n", strings.Repeat("1", 5000) + "\n1 2 3\n",
		"1 24 80 extra\r\n", "\x00\xff\n",
	} {
		f.Add([]byte(s), uint8(7))
	}
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		rec := &ctlRecorder{}
		c := &ctlFifos{ctlR: r, h: rec, diag: NewDiag(LevelTrace, io.Discard, false, "fuzz")}
		c.wg.Add(1)
		go c.readCtl()
		watchdog := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("ctl reader stuck on %q (cut %d)", data, cut)) })
		defer watchdog.Stop()
		// At most ~1000 writes: one syscall per byte of a large input
		// would only measure the kernel.
		step := max(int(cut)+1, len(data)/1000)
		for rest := data; len(rest) > 0; {
			n := min(step, len(rest))
			if _, err := w.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		w.Close()
		c.wg.Wait()
		r.Close()
		// Each complete line that parses as "1 h w" or "2 x y" is one
		// call, provided no line got lost to the 4 KiB overflow guard.
		if len(data) > 4000 {
			return
		}
		want := [3]int{}
		lines := strings.Split(string(data), "\n")
		for _, l := range lines[:len(lines)-1] {
			fs := strings.Fields(l)
			if len(fs) < 3 {
				continue
			}
			ok := true
			for _, x := range fs[:3] {
				if _, err := strconv.Atoi(x); err != nil {
					ok = false
				}
			}
			if !ok {
				continue
			}
			v, _ := strconv.Atoi(fs[0])
			switch v {
			case ctlResize:
				want[1]++
			case ctlReopenLogs:
				want[2]++
			}
		}
		if rec.resizes != want[1] || rec.reopens != want[2] {
			t.Fatalf("%q: %d resizes %d reopens, want %d %d", data, rec.resizes, rec.reopens, want[1], want[2])
		}
	})
}
