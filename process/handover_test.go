package process

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// seqText is "1\n2\n...n\n".
func seqText(from, to int) string {
	var b strings.Builder
	for k := from; k <= to; k++ {
		b.WriteString(strconv.Itoa(k))
		b.WriteByte('\n')
	}
	return b.String()
}

// TestIOHandover: a process writes numbered lines while its IO is
// suspended mid-stream and then either resumed or handed over (the old IO
// closed as a live upgrade's commit does, a new one restored from the
// duplicated descriptors). Every destination must receive every byte
// once, in order: the client's FIFOs, a file:// log, and the logging tap
// (what the old tap got followed by what the new one got).
func TestIOHandover(t *testing.T) {
	const last = 100000
	script := "seq 1 3000; echo err-before >&2; sleep 0.3; seq 3001 " + strconv.Itoa(last) + "; echo err-after >&2"
	for _, tc := range []struct {
		name     string
		handover bool
		file     bool // file:// instead of FIFOs
	}{
		{"fifo resume", false, false},
		{"fifo handover", true, false},
		{"file handover", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var (
				stdio       Stdio
				outC, errC  <-chan string
				logPath     string
				ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
			)
			defer cancel()
			if tc.file {
				logPath = filepath.Join(dir, "ctr.log")
				stdio = Stdio{Stdout: "file://" + logPath, Stderr: "file://" + logPath}
			} else {
				var out, errp string
				out, outC = fifoReader(t, dir, "out")
				errp, errC = fifoReader(t, dir, "err")
				stdio = Stdio{Stdout: out, Stderr: errp}
			}
			st, err := ParseStdio(stdio, nil)
			if err != nil {
				t.Fatal(err)
			}
			tap1 := &tapRecorder{}
			i, err := NewIO(ctx, IOConfig{ID: "c", Stdio: st, Tap: tap1})
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("/bin/sh", "-c", script)
			i.RuncIO().Set(cmd)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if sc, ok := i.RuncIO().(runc.StartCloser); ok {
				_ = sc.CloseAfterStart()
			}
			if err := i.Start(ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // in the script's pause, or near it
			if err := i.Suspend(ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(400 * time.Millisecond) // the writer fills the pipe and waits
			tap2 := tap1
			if tc.handover {
				fds, err := i.HandoverFDs()
				if err != nil {
					t.Fatal(err)
				}
				i.Close() // the commit: the old IO goes, the duplicates keep everything open
				st2, err := ParseStdio(stdio, nil)
				if err != nil {
					t.Fatal(err)
				}
				tap2 = &tapRecorder{}
				if i, err = RestoreIO(ctx, IOConfig{ID: "c", Stdio: st2, Tap: tap2}, fds); err != nil {
					t.Fatal(err)
				}
			} else {
				i.Resume()
			}
			if err := cmd.Wait(); err != nil {
				t.Fatal(err)
			}
			i.Close()

			want := seqText(1, last)
			if tc.file {
				data, err := os.ReadFile(logPath)
				if err != nil {
					t.Fatal(err)
				}
				got := strings.Replace(strings.Replace(string(data), "err-before\n", "", 1), "err-after\n", "", 1)
				if got != want {
					t.Errorf("file: %d bytes, want %d", len(got), len(want))
				}
			} else {
				if got := recv(t, outC); got != want {
					t.Errorf("stdout FIFO: %d bytes, want %d", len(got), len(want))
				}
				if got := recv(t, errC); got != "err-before\nerr-after\n" {
					t.Errorf("stderr FIFO %q", got)
				}
			}
			var tapOut, tapErr string
			for _, tp := range []*tapRecorder{tap1, tap2} {
				tp.mu.Lock()
				if !tp.closed {
					t.Errorf("a tap was not closed")
				}
				tapOut += tp.got[logging.Stdout].String()
				tapErr += tp.got[logging.Stderr].String()
				tp.mu.Unlock()
				if tap2 == tap1 {
					break
				}
			}
			if tapOut != want {
				t.Errorf("tap stdout: %d bytes, want %d", len(tapOut), len(want))
			}
			if tapErr != "err-before\nerr-after\n" {
				t.Errorf("tap stderr %q", tapErr)
			}
		})
	}
}

// TestHandoverFDsNeedsSuspend: descriptors are handed only from a
// suspended IO, and a closed IO cannot be suspended.
func TestHandoverFDsNeedsSuspend(t *testing.T) {
	st, err := ParseStdio(Stdio{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	i, err := NewIO(context.Background(), IOConfig{ID: "c", Stdio: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := i.HandoverFDs(); err == nil {
		t.Error("HandoverFDs of a running IO succeeded")
	}
	i.Close()
	if err := i.Suspend(context.Background()); err == nil {
		t.Error("Suspend of a closed IO succeeded")
	}
}

// TestSuspendStdinBusy: a stdin copier blocked writing into a process that
// does not read yet makes Suspend fail (bounded by its context); after
// Resume every byte the client wrote still reaches the process, once.
func TestSuspendStdinBusy(t *testing.T) {
	dir := t.TempDir()
	stdin := filepath.Join(dir, "stdin")
	if err := unix.Mkfifo(stdin, 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "out")
	st, err := ParseStdio(Stdio{Stdin: stdin, Stdout: "file://" + logPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	i, err := NewIO(ctx, IOConfig{ID: "c", Stdio: st})
	if err != nil {
		t.Fatal(err)
	}
	defer i.Close()
	cmd := exec.Command("/bin/sh", "-c", "sleep 1; cat")
	i.RuncIO().Set(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if sc, ok := i.RuncIO().(runc.StartCloser); ok {
		_ = sc.CloseAfterStart()
	}
	if err := i.Start(ctx); err != nil {
		t.Fatal(err)
	}
	data := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB: more than the pipes hold
	go func() {
		w, err := os.OpenFile(stdin, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = w.WriteString(data)
		w.Close()
	}()
	time.Sleep(200 * time.Millisecond)
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = i.Suspend(sctx)
	scancel()
	if err == nil {
		t.Fatal("Suspend succeeded with the stdin copier blocked")
	}
	i.Resume()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	i.Close()
	got, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != data {
		t.Fatalf("the process read %d bytes, want %d", len(got), len(data))
	}
}
