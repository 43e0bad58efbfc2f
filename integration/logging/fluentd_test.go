package logging_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/fluentd"
)

// forwardEvent is one event a forwardReceiver decoded.
type forwardEvent struct {
	Tag    string
	Time   time.Time
	Record map[string]string
}

// forwardReceiver speaks the receiving side of fluentd's forward protocol
// (Message mode: [tag, time, record, option]), acknowledging chunks when
// the sender asks.
type forwardReceiver struct {
	l      net.Listener
	events chan forwardEvent
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

func startForwardReceiver(t *testing.T, addr string) *forwardReceiver {
	t.Helper()
	var l net.Listener
	var err error
	for i := 0; i < 100; i++ { // rebinding a just-closed port may take a moment
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	r := &forwardReceiver{l: l, events: make(chan forwardEvent, 10000), conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept(t)
	t.Cleanup(r.stop)
	return r
}

func (r *forwardReceiver) addr() string { return r.l.Addr().String() }

func (r *forwardReceiver) accept(t *testing.T) {
	defer r.wg.Done()
	for {
		c, err := r.l.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.conns[c] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer c.Close()
			if err := r.serve(c); err != nil {
				t.Logf("forward receiver: %v", err)
			}
		}()
	}
}

func (r *forwardReceiver) serve(c net.Conn) error {
	dec := msgpack.NewDecoder(c)
	enc := msgpack.NewEncoder(c)
	for {
		n, err := dec.DecodeArrayLen()
		if err != nil {
			return nil // connection closed
		}
		if n != 3 && n != 4 {
			return fmt.Errorf("event array of %d elements", n)
		}
		tag, err := dec.DecodeString()
		if err != nil {
			return err
		}
		raw, err := dec.DecodeRaw()
		if err != nil {
			return err
		}
		var ts time.Time
		switch {
		case len(raw) == 10 && raw[0] == 0xd7 && raw[1] == 0: // EventTime, fixext8
			ts = time.Unix(int64(binary.BigEndian.Uint32(raw[2:])), int64(binary.BigEndian.Uint32(raw[6:])))
		default:
			var sec int64
			if err := msgpack.Unmarshal(raw, &sec); err != nil {
				return fmt.Errorf("time: %v", err)
			}
			ts = time.Unix(sec, 0)
		}
		var rec map[string]string
		if err := dec.Decode(&rec); err != nil {
			return err
		}
		var opt map[string]string
		if n == 4 {
			if err := dec.Decode(&opt); err != nil {
				return err
			}
		}
		r.events <- forwardEvent{Tag: tag, Time: ts, Record: rec}
		if chunk := opt["chunk"]; chunk != "" {
			if err := enc.Encode(map[string]string{"ack": chunk}); err != nil {
				return err
			}
		}
	}
}

// stop closes the listener and every connection, as a dying fluentd would.
func (r *forwardReceiver) stop() {
	r.l.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *forwardReceiver) collect(t *testing.T, n int) []forwardEvent {
	t.Helper()
	var got []forwardEvent
	timeout := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case e := <-r.events:
			got = append(got, e)
		case <-timeout:
			t.Fatalf("received %d events, want %d", len(got), n)
		}
	}
	return got
}

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
			rcv := startForwardReceiver(t, "127.0.0.1:0")
			meta := logging.Metadata{ID: "0123456789abcdef0123456789abcdef", Name: "web", Labels: map[string]string{"team": "core"}}
			d := fluentdOpen(t, &meta, map[string]string{
				"address": "tcp://" + rcv.addr(), "tag": "ctr.{{.Name}}.{{.ID}}", "request-ack": fmt.Sprint(ack)})
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
			got := rcv.collect(t, n)
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
	rcv := startForwardReceiver(t, "127.0.0.1:0")
	addr := rcv.addr()
	meta := logging.Metadata{ID: "feedfacefeedfacefeedface", Name: "rs"}
	d := fluentdOpen(t, &meta, map[string]string{"address": addr, "request-ack": "true", "retry-wait": "50ms", "max-retry-wait": "200ms"})
	write := func(i int) {
		t.Helper()
		if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("line %d", i)), Meta: &meta}); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	rcv.collect(t, 1)
	rcv.stop()
	for i := 1; i <= 50; i++ {
		write(i)
	}
	time.Sleep(300 * time.Millisecond) // let the client notice and back off
	rcv2 := startForwardReceiver(t, addr)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	got := rcv2.collect(t, 50)
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
	for len(rcv2.events) > 0 {
		e := <-rcv2.events
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
