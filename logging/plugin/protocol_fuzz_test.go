package plugin

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	loggingv1 "github.com/containers/conmon-v2/api/logging/v1"
	"github.com/containers/conmon-v2/logging"
)

// nopService accepts everything.
type nopService struct{}

func (nopService) Open(context.Context, *loggingv1.OpenRequest) (*loggingv1.OpenResponse, error) {
	return &loggingv1.OpenResponse{Handle: "h"}, nil
}
func (nopService) Write(context.Context, *loggingv1.WriteRequest) (*loggingv1.WriteResponse, error) {
	return &loggingv1.WriteResponse{}, nil
}
func (nopService) Reopen(context.Context, *loggingv1.ReopenRequest) (*loggingv1.ReopenResponse, error) {
	return &loggingv1.ReopenResponse{}, nil
}
func (nopService) Close(context.Context, *loggingv1.CloseRequest) (*loggingv1.CloseResponse, error) {
	return &loggingv1.CloseResponse{}, nil
}

// frame is one ttrpc message: length, stream id, type, flags, payload.
func frame(stream uint32, typ, flags byte, payload []byte) []byte {
	b := make([]byte, 10, 10+len(payload))
	binary.BigEndian.PutUint32(b[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(b[4:8], stream)
	b[8], b[9] = typ, flags
	return append(b, payload...)
}

func request(method string, m proto.Message) []byte {
	payload, _ := proto.Marshal(m)
	req, _ := proto.Marshal(&ttrpc.Request{Service: "conmon.logging.v1.LogDriver", Method: method, Payload: payload})
	return req
}

// FuzzServe: bytes sent to a plugin built on Serve (the library plugin
// authors use) never panic it, and it returns once the connection closes.
func FuzzServe(f *testing.F) {
	open := frame(1, 1, 0, request("Open", &loggingv1.OpenRequest{Metadata: &loggingv1.Metadata{Id: "c"}, Options: map[string]string{"a": "b"}}))
	write := frame(3, 1, 0, request("Write", &loggingv1.WriteRequest{Handle: "h", Seq: 1, Records: []*loggingv1.Record{{Line: []byte("x\xff"), Partial: true}}}))
	f.Add(append(open, write...))
	f.Add(frame(1, 1, 0, request("Nope", &loggingv1.CloseRequest{})))
	f.Add(frame(1, 1, 0, []byte{0xff, 0xff}))
	f.Add(frame(2, 7, 0xff, nil))
	f.Add([]byte{0, 0x40, 0, 0, 0, 0, 0, 1, 1, 0}) // 4 MiB announced, nothing sent
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- serveListener(ctx, newOneConnListener(a), nopService{}) }()
		go io.Copy(io.Discard, b) // answers
		_ = b.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = b.Write(data)
		b.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the plugin server did not return after its connection closed (input %q)", data)
		}
	})
}

// FuzzPluginAnswers: a plugin that answers conmon-v2's calls with any
// frame (the stream id of the call, fuzzed type, flags and payload) makes
// the driver fail or succeed within its call timeout, without a panic.
func FuzzPluginAnswers(f *testing.F) {
	ok, _ := proto.Marshal(&ttrpc.Response{Payload: mustProto(&loggingv1.OpenResponse{Handle: "h"})})
	f.Add(ok, byte(2), byte(0), false)
	f.Add(ok, byte(2), byte(0), true)
	f.Add([]byte{0xff}, byte(2), byte(0), false)
	f.Add([]byte{}, byte(1), byte(0xff), true)
	f.Add(mustProto(&ttrpc.Response{Status: nil, Payload: []byte{0x0a, 0xff}}), byte(2), byte(1), true)
	dir := f.TempDir()
	n := 0
	f.Fuzz(func(t *testing.T, answer []byte, typ, flags byte, wrongStream bool) {
		n++
		sock := filepath.Join(dir, fmt.Sprintf("p%d.sock", n))
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		served := make(chan struct{})
		go func() {
			defer close(served)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					hdr := make([]byte, 10)
					for {
						if _, err := io.ReadFull(c, hdr); err != nil {
							return
						}
						if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(hdr[0:4]))); err != nil {
							return
						}
						stream := binary.BigEndian.Uint32(hdr[4:8])
						if wrongStream {
							stream += 2
						}
						if _, err := c.Write(frame(stream, typ, flags, answer)); err != nil {
							return
						}
					}
				}()
			}
		}()
		factory := NewFactory(Config{SocketDirs: []string{dir}, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		d, err := factory(ctx, logging.Info{Meta: logging.Metadata{ID: "c"}, Options: map[string]string{"socket": sock, "call-timeout": "200ms"}})
		if err == nil {
			_ = d.Write(&logging.Record{Line: []byte("x"), Meta: &logging.Metadata{ID: "c"}})
			_ = d.(logging.Flusher).Flush()
			_ = d.Close()
		}
		if el := time.Since(start); el > 8*time.Second {
			t.Fatalf("the driver took %v against a plugin answering %q", el, answer)
		}
		l.Close()
		<-served
	})
}

func mustProto(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}
