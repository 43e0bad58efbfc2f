package process

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func newTestFifo(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "stdin")
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStdinCloseDelivers checks that CloseIO delivers what the client
// already wrote, then EOF, while the client keeps its end open.
func TestStdinCloseDelivers(t *testing.T) {
	path := newTestFifo(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	c, err := newStdinCopier(path, pw, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.start()
	w, err := os.OpenFile(path, os.O_WRONLY, 0) // the client
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.closeStdin(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(pr) // EOF: the copier closed the process's stdin
	if err != nil || string(got) != "ping\n" {
		t.Fatalf("process read %q, %v", got, err)
	}
}

// TestStdinClientEOF checks that the client's close is the process's EOF.
func TestStdinClientEOF(t *testing.T) {
	path := newTestFifo(t)
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	c, err := newStdinCopier(path, pw, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.start()
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("data"))
	_ = w.Close()
	got, _ := io.ReadAll(pr)
	if string(got) != "data" {
		t.Fatalf("process read %q", got)
	}
	c.stop()
}

// TestStdinNeverOpened checks that a client that never opens its end does
// not hang CloseIO or Close.
func TestStdinNeverOpened(t *testing.T) {
	for _, closeIO := range []bool{true, false} {
		path := newTestFifo(t)
		pr, pw, _ := os.Pipe()
		c, err := newStdinCopier(path, pw, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.start()
		if closeIO {
			if err := c.closeStdin(); err != nil {
				t.Fatal(err)
			}
			if got, _ := io.ReadAll(pr); len(got) != 0 {
				t.Fatalf("read %q", got)
			}
		} else {
			c.stop()
		}
		select {
		case <-c.done:
		default:
			t.Fatal("copier still running")
		}
		pr.Close()
		pw.Close()
	}
}

// TestStdinFifoRemoved checks that a client that removed its FIFO (as ctr
// does when it is done) without ever opening it does not hang Close.
func TestStdinFifoRemoved(t *testing.T) {
	path := newTestFifo(t)
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	c, err := newStdinCopier(path, pw, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.start()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	c.stop()
	select {
	case <-c.done:
	default:
		t.Fatal("copier still blocked in open after stop")
	}
	pw.Close()
}
