package passthrough_test

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/loggingtest"
	"github.com/containers/conmon-v2/logging/passthrough"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}

func TestConformance(t *testing.T) {
	loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		var out, errb lockedBuf
		d := passthrough.New(&out, &errb)
		return d, func() []logging.Record {
			return append(loggingtest.SplitStream(logging.Stdout, out.Bytes()), loggingtest.SplitStream(logging.Stderr, errb.Bytes())...)
		}
	})
}

func TestNone(t *testing.T) {
	d, err := passthrough.NoneFactory(context.Background(), logging.Info{})
	if err != nil {
		t.Fatal(err)
	}
	r := logging.Record{Stream: logging.Stdout, Line: []byte("x")}
	if err := d.Write(&r); err != nil || d.Reopen() != nil || d.Close() != nil {
		t.Fatal("none must accept everything")
	}
	if _, err := passthrough.NoneFactory(context.Background(), logging.Info{Options: map[string]string{"bogus": "1"}}); err == nil {
		t.Fatal("unknown option accepted")
	}
}
