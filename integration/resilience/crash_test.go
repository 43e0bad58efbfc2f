package resilience

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/shim/launch"
)

// killDaemon kills the group's daemon with SIGKILL and waits until it is
// gone (its parent, init, may leave it a zombie).
func killDaemon(t *testing.T, ctx context.Context, tk *task) int {
	t.Helper()
	info, err := tk.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(info.Pid)
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
			return fmt.Errorf("daemon %d still runs", pid)
		}
		return nil
	})
	return pid
}

// crashMode is one grouping of TestShimCrashReadoption.
type crashMode struct {
	name string
	// toml is the shim's configuration, in a namespace of the mode's
	// own; "" runs the default (the pod grouping).
	toml string
	// perContainer: grouping = "container", one daemon per container. A
	// killed daemon comes back only through a start naming its own
	// container again (a client's; the test runs it) or through its
	// keeper, and it reads its own task record only (launch.OnlyMember): a
	// container with a daemon of its own runs beside the killed ones,
	// untouched.
	perContainer bool
	// keeper: keeper = true. The keeper restarts the killed daemon by
	// itself with the pipes and the connections it held, so the adopted
	// task's output must have every line once and the connections opened
	// before the kill still serve.
	keeper bool
}

// crashModes are the groupings TestShimCrashReadoption runs in.
var crashModes = []crashMode{
	{name: "pod"},
	{name: "dense", toml: "grouping = \"namespace\"\n"},
	{name: "container", toml: "grouping = \"container\"\n", perContainer: true},
	{name: "container-keeper", toml: "grouping = \"container\"\nkeeper = true\n", perContainer: true, keeper: true},
}

// TestShimCrashReadoption: kill -9 of the daemon of running containers
// (per pod, per namespace, per container). The containers keep running;
// one that exits while no daemon runs is recorded by its zombie (or by
// the keeper, which reaps it); a new daemon re-adopts both from their
// records: State answers with the same pid, Wait gives the status of the
// one that exited while the daemon was down, and Kill, Wait and Delete
// work on the running one, whose exit is reported once. The new daemon
// comes from the next start in the group, from a start of the same
// container (per container), or from the keeper. Per container, a third
// container's daemon is not touched and the new daemons read only their
// own task's record.
func TestShimCrashReadoption(t *testing.T) {
	for _, m := range crashModes {
		t.Run(m.name, func(t *testing.T) { testCrashReadoption(t, m) })
	}
}

func testCrashReadoption(t *testing.T, m crashMode) {
	e := newEnv(t)
	if m.toml != "" {
		e.configure(m.name, m.toml)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	runs := []string{"sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"}
	if m.keeper {
		runs = []string{"sh", "-c", counterScript} // every number must come through
	}
	a := e.start(ctx, "runs", runs, true, nil)
	b := e.start(ctx, "exits", []string{"sleep", "1000"}, false, nil)
	if m.keeper {
		waitLines(t, a, 100) // the kill cuts a stream under way
	}
	killed := []*task{a} // the tasks whose daemon is killed
	var other *untouched
	if m.perContainer {
		killed = append(killed, b)
		other = e.startUntouched(ctx, "other")
	}
	sa, err := a.shim.State(ctx, a.id, "")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.shim.State(ctx, b.id, "")
	if err != nil {
		t.Fatal(err)
	}
	var watch *recordWatch
	if m.perContainer {
		checkOwnDaemons(ctx, t, a, b, other.tk)
		watch = watchRecords(t, filepath.Join(launch.DefaultConfig().StateDir, e.opts.Namespace), a.id, b.id, other.tk.id)
	}
	old := map[*task]int{}
	keeper := map[*task]int{}
	var dead []string
	for _, tk := range killed {
		if m.keeper {
			in, err := tk.shim.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			keeper[tk] = ppid(t, int(in.Pid))
		}
		old[tk] = killDaemon(t, ctx, tk)
		dead = append(dead, fmt.Sprintf("%d (%s)", old[tk], tk.id))
		if !m.keeper { // its connections died with it
			tk.shim.Close()
		}
	}
	t.Logf("killed daemon %s; containers %d and %d", strings.Join(dead, ", "), sa.Pid, sb.Pid)

	// b ends now, while no daemon runs (SIGKILL: a container's init
	// ignores signals it has no handler for). Under a keeper, the
	// keeper reaps it and records its status.
	if err := unix.Kill(int(sb.Pid), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if ps := process.ProcStatus(int(sb.Pid)); ps.Exists && !ps.Zombie {
			return fmt.Errorf("container %d still runs", sb.Pid)
		}
		return nil
	})
	zombie := process.ProcStatus(int(sb.Pid))
	if !alive(int(sa.Pid)) || process.ProcStatus(int(sa.Pid)).Zombie {
		t.Fatalf("container %d died with its daemon", sa.Pid)
	}

	// A new daemon for each killed one.
	var sA, sB *client.Shim // the daemons that now serve a and b
	switch {
	case !m.perContainer:
		// The next container of the group starts a new daemon.
		c := e.start(ctx, "next", []string{"sleep", "1000"}, false, nil)
		defer c.remove(t)
		info, err := c.shim.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if int(info.Pid) == old[a] {
			t.Fatalf("the dead daemon %d answered", old[a])
		}
		t.Logf("new daemon %d, group %q", info.Pid, info.Group)
		if info.Tasks != 3 {
			t.Errorf("new daemon %d serves %d tasks, want 3 (2 adopted)", info.Pid, info.Tasks)
		}
		sA, sB = c.shim, c.shim
	default:
		for _, tk := range killed {
			info := e.restartDaemon(ctx, tk, old[tk], m.keeper)
			if m.keeper && ppid(t, int(info.Pid)) != keeper[tk] {
				t.Errorf("new daemon %d of %s: parent %d, want its keeper %d", info.Pid, tk.id, ppid(t, int(info.Pid)), keeper[tk])
			}
			watch.checkOwnOnly(int(info.Pid), tk.id)
		}
		sA, sB = a.shim, b.shim
		other.check(ctx)
	}
	st, err := sA.State(ctx, a.id, "")
	if err != nil || st.Status != client.Running || st.Pid != sa.Pid {
		t.Fatalf("State of the adopted running task: %+v %v", st, err)
	}
	w, err := sB.Wait(ctx, b.id, "")
	switch {
	case err != nil:
		t.Fatalf("Wait of the task that exited while no daemon ran: %v", err)
	case (zombie.Exists || m.keeper) && w.Status != 137:
		t.Errorf("exit status %d, want 137 (SIGKILL), as its zombie or the keeper says", w.Status)
	case !zombie.Exists && !m.keeper && w.Status != 255:
		t.Errorf("exit status %d of a reaped container, want 255 (unknown)", w.Status)
	}
	t.Logf("exited while down: status %d (zombie seen: %v)", w.Status, zombie.Exists)
	downStatus := w.Status

	if m.keeper {
		// The new daemon reads the pipes the keeper held: more lines
		// come.
		waitLines(t, a, max(1000, strings.Count(a.out.String(), "\n")+100))
	}

	// From here on each exit is reported once: a's when it is killed
	// now, b's not again (its Wait above had it).
	exits := []*exitWatch{watchExits(ctx, t, sA)}
	if sB != sA {
		exits = append(exits, watchExits(ctx, t, sB))
	}
	if err := sA.Kill(ctx, a.id, "", uint32(unix.SIGKILL), false); err != nil {
		t.Fatal(err)
	}
	w, err = sA.Wait(ctx, a.id, "")
	if err != nil || w.Status != 137 {
		t.Errorf("Wait of the adopted task after SIGKILL: %+v %v, want 137", w, err)
	}
	if m.keeper {
		// The keeper held the FIFOs: the output ends only now, whole.
		if !a.io.Wait(10 * time.Second) {
			t.Errorf("%s: FIFO output did not end", a.id)
		}
		checkCustodySeq(t, a.id+" FIFO", strings.Split(strings.TrimSuffix(a.out.String(), "\n"), "\n"), 0, 0)
	}
	for _, x := range []struct {
		tk     *task
		s      *client.Shim
		status uint32
	}{{a, sA, 137}, {b, sB, downStatus}} {
		d, err := x.s.Delete(ctx, x.tk.id, "")
		if err != nil || d.Status != x.status {
			t.Errorf("Delete %s: %+v %v, want status %d", x.tk.id, d, err, x.status)
		}
		x.tk.done = true
	}
	got := map[string][]uint32{}
	for _, ex := range exits {
		for id, st := range ex.until(a.id, b.id) {
			got[id] = append(got[id], st...)
		}
	}
	if !slices.Equal(got[a.id], []uint32{137}) || len(got[b.id]) != 0 {
		t.Errorf("exit events after the re-adoption: %v; want %s's once with 137 and none of %s (reported before)", got, a.id, b.id)
	}
	if a.io != nil {
		a.io.Close()
	}
	if m.perContainer {
		// With its one task deleted, each new daemon (and its keeper)
		// ends; the untouched one serves on until its own is removed.
		other.check(ctx)
		for _, s := range []*client.Shim{sA, sB} {
			eventually(t, 30*time.Second, func() error {
				cctx, ccancel := context.WithTimeout(ctx, time.Second)
				defer ccancel()
				if in, err := s.Info(cctx); err == nil {
					return fmt.Errorf("daemon %d still serves %d tasks after its container was deleted", in.Pid, in.Tasks)
				}
				return nil
			})
		}
		other.remove(ctx)
	}
}

// checkOwnDaemons checks that each of tasks has a daemon of its own,
// serving it alone, its group named after it.
func checkOwnDaemons(ctx context.Context, t *testing.T, tasks ...*task) {
	t.Helper()
	seen := map[uint32]string{}
	for _, tk := range tasks {
		in, err := tk.shim.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if in.Tasks != 1 || in.Group != tk.id || seen[in.Pid] != "" {
			t.Fatalf("daemon %d of %s: group %q, %d tasks, also %q's; want one of its own", in.Pid, tk.id, in.Group, in.Tasks, seen[in.Pid])
		}
		seen[in.Pid] = tk.id
	}
}

// restartDaemon brings back the killed daemon (pid old) of a container
// with a daemon of its own, and returns the new one's Info; tk.shim is
// then a client of it. With a keeper the keeper restarts it by itself,
// and tk's connection, which the keeper held, is served by the new
// daemon. Without, nothing else would: a start naming the container
// again (as a client runs it) binds the same socket anew.
func (e *env) restartDaemon(ctx context.Context, tk *task, old int, keeper bool) client.ShimInfo {
	t := e.t
	t.Helper()
	if !keeper {
		addr, err := client.StartShim(ctx, e.opts, tk.id, tk.bundle)
		if err != nil {
			t.Fatalf("start of %s after its daemon died: %v", tk.id, err)
		}
		if addr != tk.addr {
			t.Errorf("start of %s after its daemon died: address %s, want %s", tk.id, addr, tk.addr)
		}
		if tk.shim, err = client.Connect(ctx, addr); err != nil {
			t.Fatal(err)
		}
	}
	info := waitNewDaemon(ctx, t, tk.shim, old, tk.id)
	t.Logf("new daemon %d of %s (parent %d)", info.Pid, tk.id, ppid(t, int(info.Pid)))
	if info.Tasks != 1 || info.Group != tk.id {
		t.Errorf("new daemon %d of %s: group %q, %d tasks; want its own group and task alone", info.Pid, tk.id, info.Group, info.Tasks)
	}
	return info
}

// waitLines waits until tk's client received n lines of output.
func waitLines(t *testing.T, tk *task, n int) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		if got := strings.Count(tk.out.String(), "\n"); got < n {
			return fmt.Errorf("%s printed %d lines, want %d", tk.id, got, n)
		}
		return nil
	})
}

// exitWatch is a subscription to a daemon's /tasks/exit and
// /tasks/delete events.
type exitWatch struct {
	t   *testing.T
	evc <-chan client.Event
}

func watchExits(ctx context.Context, t *testing.T, s *client.Shim) *exitWatch {
	t.Helper()
	cctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	evc, _, err := s.Subscribe(cctx, "/tasks/exit", "/tasks/delete")
	if err != nil {
		t.Fatal(err)
	}
	return &exitWatch{t: t, evc: evc}
}

// until reads the events until each of ids (tasks the daemon serves) was
// deleted, or the daemon went, and returns the statuses of the exits of
// their init processes, by task, in order.
func (w *exitWatch) until(ids ...string) map[string][]uint32 {
	t := w.t
	t.Helper()
	exits := map[string][]uint32{}
	left := map[string]bool{}
	for _, id := range ids {
		left[id] = true
	}
	guard := time.After(20 * time.Second) // a deadlock guard, not a timing assertion
	for len(left) > 0 {
		select {
		case ev, ok := <-w.evc:
			if !ok {
				return exits
			}
			msg, err := ev.Decode()
			if err != nil {
				t.Fatalf("event %s: %v", ev.Topic, err)
			}
			switch m := msg.(type) {
			case *apievents.TaskExit:
				if m.ID == m.ContainerID {
					exits[m.ContainerID] = append(exits[m.ContainerID], m.ExitStatus)
				}
			case *apievents.TaskDelete:
				if m.ID == "" || m.ID == m.ContainerID {
					delete(left, m.ContainerID)
				}
			}
		case <-guard:
			t.Errorf("no delete event of %v within 20 s", slices.Collect(maps.Keys(left)))
			return exits
		}
	}
	return exits
}

// untouched is a container with a daemon of its own beside those the
// test kills: it prints numbered lines into the client's FIFOs all along,
// and its daemon must not notice the others' crashes.
type untouched struct {
	t      *testing.T
	tk     *task
	daemon uint32
	exits  *exitWatch
}

func (e *env) startUntouched(ctx context.Context, id string) *untouched {
	t := e.t
	t.Helper()
	tk := e.start(ctx, id, []string{"sh", "-c", counterScript}, true, nil)
	in, err := tk.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &untouched{t: t, tk: tk, daemon: in.Pid, exits: watchExits(ctx, t, tk.shim)}
}

// check checks that the same daemon serves the task alone, running, on
// the connection opened before the crashes.
func (u *untouched) check(ctx context.Context) {
	t := u.t
	t.Helper()
	in, err := u.tk.shim.Info(ctx)
	if err != nil || in.Pid != u.daemon || in.Tasks != 1 {
		t.Fatalf("the untouched container's daemon: %+v %v, want pid %d with 1 task", in, err, u.daemon)
	}
	if st, err := u.tk.shim.State(ctx, u.tk.id, ""); err != nil || st.Status != client.Running {
		t.Fatalf("the untouched container: %+v %v, want running", st, err)
	}
}

// remove kills and deletes the container, then checks that its daemon
// reported its exit alone, once, and that its output has every number
// once and in order.
func (u *untouched) remove(ctx context.Context) {
	t := u.t
	t.Helper()
	waitLines(t, u.tk, 1000) // checkCustodySeq wants as many
	u.tk.done = true
	killAndDelete(ctx, t, u.tk.shim, u.tk.id)
	if got := u.exits.until(u.tk.id); !maps.EqualFunc(got, map[string][]uint32{u.tk.id: {137}}, slices.Equal) {
		t.Errorf("the untouched container's daemon reported the exits %v, want its own once with 137", got)
	}
	if !u.tk.io.Wait(10 * time.Second) {
		t.Errorf("%s: FIFO output did not end", u.tk.id)
	}
	checkCustodySeq(t, u.tk.id+" FIFO", strings.Split(strings.TrimSuffix(u.tk.out.String(), "\n"), "\n"), 0, 0)
	u.tk.io.Close()
	u.tk.shim.Close()
}

// TestDeadShimDelete: what containerd does when a shim dies - it runs the
// shim binary's delete action for each of the shim's tasks. delete kills
// the container, removes the runtime's state, the task record and the
// dead daemon's socket, and reports 137.
func TestDeadShimDelete(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tk := e.start(ctx, "orphan", []string{"sleep", "1000"}, false, nil)
	st, err := tk.shim.State(ctx, tk.id, "")
	if err != nil {
		t.Fatal(err)
	}
	killDaemon(t, ctx, tk)
	tk.shim.Close()
	tk.done = true
	resp, err := client.DeleteShim(ctx, e.opts, tk.id, tk.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ExitStatus != 137 || resp.Pid != st.Pid {
		t.Errorf("delete answered %+v, want pid %d status 137", resp, st.Pid)
	}
	eventually(t, 20*time.Second, func() error {
		if ps := process.ProcStatus(int(st.Pid)); ps.Exists && !ps.Zombie {
			return fmt.Errorf("container %d still runs", st.Pid)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join("/run/conmon-v2/runc", e.opts.Namespace, tk.id)); !os.IsNotExist(err) {
		t.Errorf("runc state left: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/run/conmon-v2/state", e.opts.Namespace, tk.id)); !os.IsNotExist(err) {
		t.Errorf("task record left: %v", err)
	}
	if _, err := os.Stat(socketPath(tk.addr)); !os.IsNotExist(err) {
		t.Errorf("dead daemon's socket left: %v", err)
	}
	// A second delete (containerd retries) is harmless.
	if _, err := client.DeleteShim(ctx, e.opts, tk.id, tk.bundle); err != nil {
		t.Errorf("second delete: %v", err)
	}
}
