package resilience

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/containers/conmon-v2/client"
)

// TestRequestFlood: a client floods the real daemon with 5,000 Wait
// requests on one connection and never reads an answer. The daemon reads
// only `requests_per_connection` of them (its goroutines stay bounded,
// reported by the Monitor API's Info), keeps answering other connections,
// and Kill and Delete of the container go through; once the container is
// gone the goroutines return to where they were.
func TestRequestFlood(t *testing.T) {
	e := newEnv(t)
	const perConn, flood = 64, 5000
	e.configure("flood", fmt.Sprintf("grouping = \"namespace\"\n[limits]\nrequests_per_connection = %d\n", perConn))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keep := e.start(ctx, "keep", []string{"sleep", "1000"}, false, nil)
	tk := e.start(ctx, "flood", []string{"sleep", "1000"}, false, nil)
	before, err := keep.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}

	payload, err := proto.Marshal(&taskv2.WaitRequest{ID: tk.id})
	if err != nil {
		t.Fatal(err)
	}
	req, err := proto.Marshal(&ttrpc.Request{Service: "containerd.task.v2.Task", Method: "Wait", Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for i := range flood {
		var h [10]byte
		binary.BigEndian.PutUint32(h[0:4], uint32(len(req)))
		binary.BigEndian.PutUint32(h[4:8], uint32(2*i+1))
		h[8] = 1 // request
		buf = append(append(buf, h[:]...), req...)
	}
	c, err := net.Dial("unix", socketPath(tk.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write(buf) // blocks once the daemon stops reading

	// The daemon holds at most perConn of them.
	var during client.ShimInfo
	eventually(t, 30*time.Second, func() error {
		during, err = keep.shim.Info(ctx)
		if err != nil {
			return err
		}
		if during.Goroutines < before.Goroutines+perConn {
			return fmt.Errorf("%d goroutines, the flood not yet at its bound (%d before)", during.Goroutines, before.Goroutines)
		}
		return nil
	})
	time.Sleep(time.Second) // let any excess show
	during, err = keep.shim.Info(ctx)
	if err != nil {
		t.Fatalf("Info during the flood: %v", err)
	}
	if max := before.Goroutines + perConn + 8; during.Goroutines > max {
		t.Errorf("%d goroutines with %d Waits sent, want at most %d (%d before)", during.Goroutines, flood, max, before.Goroutines)
	}
	t.Logf("goroutines: %d before, %d with %d Waits sent on one connection (bound %d)", before.Goroutines, during.Goroutines, flood, perConn)

	// Kill and Delete on the task's own client connection.
	if err := tk.shim.Kill(ctx, tk.id, "", uint32(unix.SIGKILL), true); err != nil {
		t.Fatalf("kill during the flood: %v", err)
	}
	if w, err := tk.shim.Wait(ctx, tk.id, ""); err != nil || w.Status != 137 {
		t.Fatalf("wait: %+v %v", w, err)
	}
	tk.remove(t)
	c.Close()
	eventually(t, 30*time.Second, func() error {
		after, err := keep.shim.Info(ctx)
		if err != nil {
			return err
		}
		if after.Goroutines > before.Goroutines {
			return fmt.Errorf("%d goroutines after the flood, %d before", after.Goroutines, before.Goroutines)
		}
		return nil
	})
	keep.remove(t)
}
