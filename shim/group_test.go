package shim

import (
	"context"
	"net"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
)

// TestJoin checks the hand-written ttrpc exchange of join against a real
// ttrpc server: what a daemon answers, and what a dead or foreign one does.
func TestJoin(t *testing.T) {
	joinWith := func(fn func(context.Context, *taskv2.ConnectRequest) (*runtimeoptions.Options, error)) func(*ttrpc.Server) {
		return func(srv *ttrpc.Server) {
			srv.RegisterService(GroupService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{"Join": method(fn)}})
		}
	}
	for _, tc := range []struct {
		name     string
		register func(*ttrpc.Server) // nil: a listener that closes every connection
		wantOK   bool
		wantCfg  string
	}{
		{"daemon", func(srv *ttrpc.Server) {
			registerGroupService(srv, newMembership(time.Minute), []byte("grouping = \"pod\"\n"))
		}, true, "grouping = \"pod\"\n"},
		{"daemon without config", func(srv *ttrpc.Server) { registerGroupService(srv, newMembership(time.Minute), nil) }, true, ""},
		{"older daemon without the Group service", func(*ttrpc.Server) {}, true, ""},
		{"join refused", joinWith(func(context.Context, *taskv2.ConnectRequest) (*runtimeoptions.Options, error) {
			return nil, errdefs.ErrFailedPrecondition
		}), false, ""},
		{"no ttrpc server", nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := shortTempSocket(t)
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			if tc.register == nil {
				go func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						c.Close()
					}
				}()
				t.Cleanup(func() { l.Close() })
			} else {
				serveTTRPC(t, l, tc.register)
			}
			cfg, ok := join(sock, "c1")
			if ok != tc.wantOK || string(cfg) != tc.wantCfg {
				t.Fatalf("join = %q, %v; want %q, %v", cfg, ok, tc.wantCfg, tc.wantOK)
			}
		})
	}
	if _, ok := join(shortTempSocket(t), "c1"); ok {
		t.Fatal("join succeeded on a socket nobody listens on")
	}
}

// serveTTRPC serves l with a ttrpc server set up by register until the
// test ends.
func serveTTRPC(t *testing.T, l net.Listener, register func(*ttrpc.Server)) {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	register(srv)
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
}
