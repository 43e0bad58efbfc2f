package main

import (
	"log/slog"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/process"
)

// countFDs counts this process's open descriptors.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestCustody: what a daemon sends over the custody socket is what the
// keeper holds: holds replace, drops and releases close, a held
// connection is replaced by the same key; the handover numbers the held
// descriptors from base in the live upgrade's format; and every
// descriptor the keeper held is closed once forgotten.
func TestCustody(t *testing.T) {
	base := countFDs(t)
	kfd, dfd, err := custodyPair()
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	set := newCustodySet(log)
	served := make(chan struct{})
	go func() { defer close(served); set.serve(kfd) }()
	c := &custodyClient{fd: dfd, log: log}

	pipe := func() (int, int) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		return p[0], p[1]
	}
	r1, w1 := pipe()
	r2, w2 := pipe()
	r3, w3 := pipe()
	dup := func(fd int) int {
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	// init of task a: stdout, stderr and stdin; held twice (the second
	// replaces the first, as a restored IO does).
	c.Hold("a", "", process.IOFDs{Stdout: dup(r1), Stderr: dup(r2), Stdin: dup(w3)})
	c.Hold("a", "", process.IOFDs{Stdout: dup(r1), Stderr: dup(r2), Stdin: dup(w3), LoggerPid: 42})
	c.Drop("a", "", process.RoleStdin) // CloseIO
	// an exec of task a, then released; task b's init.
	c.Hold("a", "x", process.IOFDs{Stdout: dup(r3)})
	c.Hold("b", "", process.IOFDs{Console: dup(r2)})
	c.Release("a", "x")
	sock := dup(r1) // any descriptor stands for a socket here
	c.HoldConn(7, sock)
	c.HoldConn(7, dup(r1)) // the same connection again (a new daemon)
	c.HoldConn(9, dup(r1))
	c.DropConn(9)
	unix.Close(dfd)
	<-served

	tasks, conns, files := set.handover(10)
	if len(conns) != 1 || conns[0].FD != 10 {
		t.Errorf("connections %+v, want one, as descriptor 10", conns)
	}
	if len(tasks) != 2 || tasks[0].ID != "a" || tasks[1].ID != "b" {
		t.Fatalf("tasks %+v, want a and b", tasks)
	}
	a, b := tasks[0], tasks[1]
	if a.Init.Stdin != 0 || !a.Init.StdinEnded || a.Init.LoggerPid != 42 || a.Init.Stdout == 0 || a.Init.Stderr == 0 || len(a.Execs) != 0 {
		t.Errorf("task a: %+v", a)
	}
	if b.Init.Console == 0 {
		t.Errorf("task b: %+v", b)
	}
	if len(files) != 4 {
		t.Errorf("%d descriptors to hand, want 4 (1 connection, 2 of a, 1 of b)", len(files))
	}
	seen := map[int]bool{}
	for _, fd := range append(append(a.Init.List(), b.Init.List()...), conns[0].FD) {
		if fd < 10 || fd >= 10+len(files) || seen[fd] {
			t.Errorf("descriptor %d out of 10..%d or repeated", fd, 10+len(files)-1)
		}
		seen[fd] = true
	}
	// Forget everything: the keeper holds nothing more.
	set.apply(custodyMsg{Op: "release", Task: "a"}, nil)
	set.apply(custodyMsg{Op: "release", Task: "b"}, nil)
	set.apply(custodyMsg{Op: "conn_close", Conn: 7}, nil)
	if n := set.count(); n != 0 {
		t.Errorf("%d descriptors held after every release", n)
	}
	for _, fd := range []int{r1, w1, r2, w2, r3, w3} {
		unix.Close(fd)
	}
	if n := countFDs(t); n != base {
		ents, _ := os.ReadDir("/proc/self/fd")
		var l []string
		for _, e := range ents {
			d, _ := os.Readlink("/proc/self/fd/" + e.Name())
			l = append(l, e.Name()+"="+d)
		}
		t.Errorf("%d descriptors open, %d before: the custody leaks: %v", n, base, l)
	}
}

// TestCustodySynced: after a handover, what the new daemon holds again
// replaces what was handed; at its "synced" the rest (a task it could not
// restore, a connection it did not rebuild) is closed, and nothing else.
func TestCustodySynced(t *testing.T) {
	base := countFDs(t)
	set := newCustodySet(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	dup := func() int {
		d, err := unix.FcntlInt(uintptr(p[0]), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	set.apply(custodyMsg{Op: "hold", Task: "a", Roles: []string{process.RoleStdout, process.RoleStderr}}, []int{dup(), dup()})
	set.apply(custodyMsg{Op: "hold", Task: "b", Roles: []string{process.RoleStdout}}, []int{dup()})
	set.apply(custodyMsg{Op: "conn", Conn: 1}, []int{dup()})
	set.apply(custodyMsg{Op: "conn", Conn: 2}, []int{dup()})
	if _, _, files := set.handover(3); len(files) != 5 {
		t.Fatalf("%d descriptors handed, want 5", len(files))
	}
	// The new daemon restored a and connection 1 only.
	set.apply(custodyMsg{Op: "hold", Task: "a", Roles: []string{process.RoleStdout}}, []int{dup()})
	set.apply(custodyMsg{Op: "conn", Conn: 1}, []int{dup()})
	set.apply(custodyMsg{Op: "synced"}, nil)
	tasks, conns, files := set.handover(3)
	if len(tasks) != 1 || tasks[0].ID != "a" || len(conns) != 1 || len(files) != 2 {
		t.Errorf("after synced: tasks %+v, connections %+v, %d descriptors; want a's stdout and one connection", tasks, conns, len(files))
	}
	// A "synced" with everything held again closes nothing.
	set.apply(custodyMsg{Op: "hold", Task: "a", Roles: []string{process.RoleStdout}}, []int{dup()})
	set.apply(custodyMsg{Op: "conn", Conn: 1}, []int{dup()})
	set.apply(custodyMsg{Op: "synced"}, nil)
	if n := set.count(); n != 2 {
		t.Errorf("%d descriptors held, want 2", n)
	}
	set.apply(custodyMsg{Op: "release", Task: "a"}, nil)
	set.apply(custodyMsg{Op: "conn_close", Conn: 1}, nil)
	unix.Close(p[0])
	unix.Close(p[1])
	if n := countFDs(t); n != base {
		t.Errorf("%d descriptors open, %d before", n, base)
	}
}
