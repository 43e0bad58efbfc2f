package shim

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestQuietTimerCoalescesBursts(t *testing.T) {
	var calls atomic.Int32
	q := newQuietTimer(50*time.Millisecond, func() { calls.Add(1) })
	defer q.stop()
	for range 5 {
		q.kick()
		time.Sleep(5 * time.Millisecond)
	}
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Fatalf("a burst of 5 kicks made %d calls, want 1", n)
	}
	q.kick()
	for calls.Load() == 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("a kick after the call made %d calls in total, want 2", n)
	}
}

func TestQuietTimerStop(t *testing.T) {
	var calls atomic.Int32
	q := newQuietTimer(20*time.Millisecond, func() { calls.Add(1) })
	q.kick()
	q.stop()
	q.kick() // ignored after stop
	time.Sleep(100 * time.Millisecond)
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d calls after stop, want 0", n)
	}
}
