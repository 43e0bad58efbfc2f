package conmon

import (
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// The log pipeline grows a busy stream's pipe only through syscall.Conn.
var _ syscall.Conn = (*drainReader)(nil)

func TestProcBoost(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: no boost")
	}
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })

	b := newProcBoost()
	if b == nil {
		t.Fatal("newProcBoost returned nil at GOMAXPROCS=1")
	}
	b.hold = 20 * time.Millisecond
	b.busy()
	if got := runtime.GOMAXPROCS(0); got != boostProcs {
		t.Fatalf("GOMAXPROCS after a busy read = %d, want %d", got, boostProcs)
	}
	// Busy reads keep it raised past one hold.
	for end := time.Now().Add(3 * b.hold); time.Now().Before(end); time.Sleep(b.hold / 4) {
		b.busy()
	}
	if got := runtime.GOMAXPROCS(0); got != boostProcs {
		t.Fatalf("GOMAXPROCS while busy = %d, want %d", got, boostProcs)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS still %d after the output went quiet", runtime.GOMAXPROCS(0))
		}
		time.Sleep(b.hold / 4)
	}
	// Raised again, then Close returns it and later reads change nothing.
	b.busy()
	b.Close()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("GOMAXPROCS after Close = %d, want 1", got)
	}
	b.busy()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("GOMAXPROCS after a read past Close = %d, want 1", got)
	}

	// No boost where GOMAXPROCS is already high enough; nil is inert.
	runtime.GOMAXPROCS(boostProcs)
	if b := newProcBoost(); b != nil {
		t.Fatalf("newProcBoost at GOMAXPROCS=%d: want nil", boostProcs)
	}
	var none *procBoost
	none.busy()
	none.Close()
}

func TestDrainReaderBusyReadBoosts(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: no boost")
	}
	prev := runtime.GOMAXPROCS(1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	b := newProcBoost()
	defer b.Close()
	d := newDrainReader(r, b)
	defer d.Close()
	buf := make([]byte, 2*busyRead)
	for _, tc := range []struct {
		n    int
		want int
	}{
		{100, 1},               // a quiet line
		{busyRead, boostProcs}, // a pipe's worth: busy
	} {
		// At most a default pipe's worth: the write completes at once
		// and one read takes it all.
		if _, err := w.Write(make([]byte, tc.n)); err != nil {
			t.Fatal(err)
		}
		if n, err := d.Read(buf); err != nil || n != tc.n {
			t.Fatalf("Read = %d, %v; want %d bytes", n, err, tc.n)
		}
		if g := runtime.GOMAXPROCS(0); g != tc.want {
			t.Fatalf("after a read of %d bytes GOMAXPROCS = %d, want %d", tc.n, g, tc.want)
		}
	}
}
