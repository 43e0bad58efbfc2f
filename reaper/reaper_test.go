package reaper

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

func TestStartWaitAndSubscribeInOrder(t *testing.T) {
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	sub := r.Subscribe()
	defer sub.Close()

	var pids []int
	for _, code := range []string{"0", "3", "7"} {
		cmd := exec.Command("/bin/sh", "-c", "exit "+code)
		ec, err := r.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		st, err := r.Wait(cmd, ec)
		if err != nil {
			t.Fatal(err)
		}
		if want := int(code[0] - '0'); st != want {
			t.Fatalf("status %d, want %d", st, want)
		}
		pids = append(pids, cmd.Process.Pid)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	for i, pid := range pids {
		e, err := sub.Recv(rctx)
		if err != nil {
			t.Fatal(err)
		}
		if e.Pid != pid {
			t.Fatalf("exit %d: pid %d, want %d (order lost)", i, e.Pid, pid)
		}
	}
	cancel()
	<-done
}

func TestSignalStatus(t *testing.T) {
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	cmd := exec.Command("/bin/sh", "-c", "kill -9 $$")
	ec, err := r.StartLocked(cmd)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := r.Wait(cmd, ec)
	if st != 137 {
		t.Fatalf("status %d, want 137", st)
	}
}
