// Package fluentdtest is a fluentd forward-protocol receiver for tests: it
// decodes events in Message mode ([tag, time, record, option]) with
// github.com/vmihailenco/msgpack/v5 and acknowledges chunks when asked, so
// the fluentd driver can be tested without fluentd.
package fluentdtest

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Event is one event a Receiver decoded.
type Event struct {
	Tag    string
	Time   time.Time
	Record map[string]string
}

// Receiver speaks the receiving side of fluentd's forward protocol
// (Message mode: [tag, time, record, option]), acknowledging chunks when
// the sender asks.
type Receiver struct {
	l net.Listener
	// Events receives every decoded event, in arrival order.
	Events chan Event
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// Start listens on addr ("127.0.0.1:0" for any port) and serves until
// Stop or the end of the test.
func Start(t testing.TB, addr string) *Receiver {
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
	return Serve(t, l)
}

// Serve serves on l (a unix socket listener, say) until Stop or the end of
// the test.
func Serve(t testing.TB, l net.Listener) *Receiver {
	r := &Receiver{l: l, Events: make(chan Event, 10000), conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept(t)
	t.Cleanup(r.Stop)
	return r
}

// Addr is the address the receiver listens on.
func (r *Receiver) Addr() string { return r.l.Addr().String() }

func (r *Receiver) accept(t testing.TB) {
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

func (r *Receiver) serve(c net.Conn) error {
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
		r.Events <- Event{Tag: tag, Time: ts, Record: rec}
		if chunk := opt["chunk"]; chunk != "" {
			if err := enc.Encode(map[string]string{"ack": chunk}); err != nil {
				return err
			}
		}
	}
}

// Stop closes the listener and every connection, as a dying fluentd would.
func (r *Receiver) Stop() {
	r.l.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// Collect waits (up to 30s) for n events and returns them.
func (r *Receiver) Collect(t testing.TB, n int) []Event {
	t.Helper()
	var got []Event
	timeout := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case e := <-r.Events:
			got = append(got, e)
		case <-timeout:
			t.Fatalf("received %d events, want %d", len(got), n)
		}
	}
	return got
}
