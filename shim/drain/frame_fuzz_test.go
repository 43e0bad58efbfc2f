package drain

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
)

// fuzzFrames is a seed: a request, a data frame and a response.
func fuzzFrames() []byte {
	var b []byte
	for _, h := range []header{{5, 1, typeRequest, 0}, {3, 1, typeData, flagRemoteClosed}, {0, 3, typeResponse, 0}} {
		f := make([]byte, headerLen+h.length)
		binary.BigEndian.PutUint32(f[0:4], h.length)
		binary.BigEndian.PutUint32(f[4:8], h.stream)
		f[8], f[9] = h.typ, h.flags
		b = append(b, f...)
	}
	return b
}

// FuzzConnRead: a connection that is not frozen passes the peer's bytes
// through unchanged, whatever their framing and however they are cut,
// except a partial header before end-of-file; it counts the requests.
func FuzzConnRead(f *testing.F) {
	f.Add(fuzzFrames(), uint64(1))
	f.Add(append(fuzzFrames(), 0, 0, 0), uint64(2))                    // a partial header last
	f.Add([]byte{0, 0, 0, 100, 0, 0, 0, 1, 1, 0, 'x'}, uint64(3))      // a frame cut short
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0}, uint64(4)) // 4 GiB announced
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		// What should come out, and how many requests it holds.
		want, requests := len(data), 0
		for pos := 0; ; {
			if len(data)-pos < headerLen {
				want = pos
				break
			}
			h := parseHeader(data[pos:])
			if h.typ == typeRequest {
				requests++
			}
			pos += headerLen + int(h.length)
			if pos >= len(data) {
				break
			}
		}

		l := &Listener{}
		l.cond = sync.NewCond(&l.mu)
		a, b := net.Pipe()
		c := l.newConn(a, nil)
		defer c.Close()
		rng := rand.New(rand.NewPCG(seed, 7))
		cuts := make([]int, 0, 16)
		for rest := len(data); rest > 0; {
			n := 1 + rng.IntN(min(rest, 64))
			cuts = append(cuts, n)
			rest -= n
		}
		go func() {
			d := data
			for _, n := range cuts {
				if _, err := b.Write(d[:n]); err != nil {
					return
				}
				d = d[n:]
			}
			b.Close()
		}()
		var got bytes.Buffer
		buf := make([]byte, 1+rng.IntN(100))
		for {
			n, err := c.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("read: %v", err)
				}
				break
			}
		}
		if !bytes.Equal(got.Bytes(), data[:want]) {
			t.Fatalf("read %d bytes, want the first %d of %d", got.Len(), want, len(data))
		}
		l.mu.Lock()
		n := c.inflightN
		l.mu.Unlock()
		if n != requests {
			t.Fatalf("%d requests counted, want %d", n, requests)
		}
	})
}

// FuzzFrameWriter: the frames seen in bytes written in pieces are those
// of the bytes written at once.
func FuzzFrameWriter(f *testing.F) {
	f.Add(fuzzFrames(), uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		var whole, pieces []header
		var w1, w2 frameWriter
		w1.feed(data, func(h header) { whole = append(whole, h) })
		rng := rand.New(rand.NewPCG(seed, 9))
		for d := data; len(d) > 0; {
			n := 1 + rng.IntN(len(d))
			w2.feed(d[:n], func(h header) { pieces = append(pieces, h) })
			d = d[n:]
		}
		if len(whole) != len(pieces) {
			t.Fatalf("%d frames at once, %d in pieces", len(whole), len(pieces))
		}
		for i := range whole {
			if whole[i] != pieces[i] {
				t.Fatalf("frame %d: %+v at once, %+v in pieces", i, whole[i], pieces[i])
			}
		}
	})
}
