package logging_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/fluentd"
	"github.com/containers/conmon-v2/logging/fluentd/fluentdtest"
)

func fluentdOpen(t *testing.T, meta *logging.Metadata, opts map[string]string) logging.Driver {
	t.Helper()
	d, err := fluentd.New(context.Background(), logging.Info{Meta: *meta, Options: opts})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestFluentdForward(t *testing.T) {
	testutil.RequiresRoot(t)
	for _, ack := range []bool{false, true} {
		t.Run(fmt.Sprintf("ack=%v", ack), func(t *testing.T) {
			rcv := fluentdtest.Start(t, "127.0.0.1:0")
			meta := logging.Metadata{ID: "0123456789abcdef0123456789abcdef", Name: "web", Labels: map[string]string{"team": "core"}}
			d := fluentdOpen(t, &meta, map[string]string{
				"address": "tcp://" + rcv.Addr(), "tag": "ctr.{{.Name}}.{{.ID}}", "request-ack": fmt.Sprint(ack)})
			start := time.Now()
			const n = 200
			for i := 0; i < n; i++ {
				r := logging.Record{Time: time.Now(), Stream: logging.Stream(1 + i%2), Line: []byte(fmt.Sprintf("line %d", i)), Partial: i == 7, Meta: &meta}
				if err := d.Write(&r); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			got := rcv.Collect(t, n)
			for i, e := range got {
				want := map[string]string{"container_id": meta.ID, "container_name": "web", "source": logging.Stream(1 + i%2).String(), "log": fmt.Sprintf("line %d", i), "team": "core"}
				if i == 7 {
					want["partial_message"] = "true"
				}
				if fmt.Sprint(e.Record) != fmt.Sprint(want) {
					t.Errorf("event %d: %v, want %v", i, e.Record, want)
				}
				if e.Tag != "ctr.web.0123456789ab" {
					t.Errorf("event %d: tag %q", i, e.Tag)
				}
				if e.Time.Before(start.Add(-time.Second)) || e.Time.After(time.Now().Add(time.Second)) {
					t.Errorf("event %d: time %v", i, e.Time)
				}
			}
		})
	}
}

// TestFluentdReceiverRestart: events written while the receiver is down
// queue and are delivered, in order, once it is back.
func TestFluentdReceiverRestart(t *testing.T) {
	testutil.RequiresRoot(t)
	rcv := fluentdtest.Start(t, "127.0.0.1:0")
	addr := rcv.Addr()
	meta := logging.Metadata{ID: "feedfacefeedfacefeedface", Name: "rs"}
	d := fluentdOpen(t, &meta, map[string]string{"address": addr, "request-ack": "true", "retry-wait": "50ms", "max-retry-wait": "200ms"})
	write := func(i int) {
		t.Helper()
		if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("line %d", i)), Meta: &meta}); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	rcv.Collect(t, 1)
	rcv.Stop()
	for i := 1; i <= 50; i++ {
		write(i)
	}
	time.Sleep(300 * time.Millisecond) // let the client notice and back off
	rcv2 := fluentdtest.Start(t, addr)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got := rcv2.Collect(t, 50)
	// At-least-once: an event in flight when the receiver died may come
	// again; none may be missing and the order holds.
	next := 1
	for _, e := range got {
		var i int
		fmt.Sscanf(e.Record["log"], "line %d", &i)
		if i == next {
			next++
		}
	}
	for len(rcv2.Events) > 0 {
		e := <-rcv2.Events
		var i int
		fmt.Sscanf(e.Record["log"], "line %d", &i)
		if i == next {
			next++
		}
	}
	if next != 51 {
		t.Errorf("events after restart delivered up to line %d, want 50", next-1)
	}
}

// TestFluentdBoundedBuffer: with the receiver away, the queue holds
// buffer-limit events; further writes fail as ResourceExhausted and Close
// reports the undelivered ones.
func TestFluentdBoundedBuffer(t *testing.T) {
	testutil.RequiresRoot(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	meta := logging.Metadata{ID: "abcabcabcabcabc"}
	d := fluentdOpen(t, &meta, map[string]string{"address": addr, "buffer-limit": "10", "close-timeout": "100ms"})
	var accepted, refused int
	for i := 0; i < 30; i++ {
		err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte("x"), Meta: &meta})
		switch {
		case err == nil:
			accepted++
		case errors.Is(err, errdefs.ErrResourceExhausted):
			refused++
		default:
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if accepted < 10 || accepted > 11 || accepted+refused != 30 {
		t.Errorf("accepted %d, refused %d; want 10 or 11 accepted (buffer plus one in flight)", accepted, refused)
	}
	err = d.Close()
	if err == nil || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Close = %v, want the undelivered events reported", err)
	}
}
