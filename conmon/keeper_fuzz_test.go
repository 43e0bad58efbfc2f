package conmon

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// FuzzKeeperRequest: any request the keeper's socket may carry (a peer of
// the keeper's uid) is answered without a panic; a spawn starts a monitor
// only for a command line Parse accepts, and the state stays consistent.
// No file is written and nothing is run (writeFiles, runExit, start are
// fakes): the fuzzed paths are arbitrary.
func FuzzKeeperRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"spawn","args":["conmon","-c","c","-u","u","-r","/bin/true"],"fds":[0,1,2]}`,
		`{"op":"spawn","args":["conmon","--bogus"],"fds":[0,1,2]}`,
		`{"op":"spawn","args":[],"fds":[0,1,2,1023]}`,
		`{"op":"container","pid":7}`,
		`{"op":"exited","status":-1}`,
		`{"op":"done"}`,
		`{"op":"spawn","args":["c","-c","x","--exit-dir","/nonexistent","--exit-command","/bin/true"],"fds":[2,1,0]}`,
		`{"op":7}`,
		`[]`,
	} {
		f.Add([]byte(s), 1, 0)
	}
	f.Fuzz(func(t *testing.T, data []byte, peer, exit int) {
		k := NewKeeper("/k.sock", nil, io.Discard)
		var mu sync.Mutex
		started := 0
		k.exe = func(int) string { return "/peer-exe" }
		k.start = func(cmd *exec.Cmd) error {
			mu.Lock()
			defer mu.Unlock()
			if _, err := Parse(cmd.Args[1:]); err != nil {
				return fmt.Errorf("started with a bad command line: %v", err)
			}
			p, err := os.FindProcess(1 << 22) // never a real pid; not signalled
			cmd.Process = p
			started++
			return err
		}
		// Never touch the paths of a fuzzed command line.
		k.writeFiles = func(string, string, string, int) []error { return nil }
		k.runExit = func(*keeperEntry) {}
		k.alive = func(int) bool { return true }
		var req keeperRequest
		if json.Unmarshal(data, &req) != nil {
			return
		}
		var files []*os.File
		for range min(len(req.FDs), 8) {
			fh, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			files = append(files, fh)
		}
		pid, err := k.handle(peer, &req, files)
		if err == nil && req.Op == keeperOpSpawn {
			// The monitor's reports, then its and an orphan's exits.
			for _, op := range []string{keeperOpContainer, keeperOpExited} {
				if _, err := k.handle(pid, &keeperRequest{Op: op, Pid: peer, Status: exit}, nil); err != nil && peer > 1 {
					t.Fatalf("%s: %v", op, err)
				}
			}
			k.handleExit(pid, exit)
			k.handleExit(peer, exit)
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		for c, e := range k.byCtr {
			if e.ctr != c {
				t.Fatalf("byCtr[%d] names container %d", c, e.ctr)
			}
		}
	})
}
