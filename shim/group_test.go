package shim

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	"github.com/containers/conmon-v2/shim/launch"

	"github.com/containers/conmon-v2/internal/testutil"
)

// TestJoin checks the hand-written ttrpc exchange of launch.Join against a real
// ttrpc server: what a daemon answers, and what a dead or foreign one does.
func TestJoin(t *testing.T) {
	joinWith := func(fn func(context.Context, *taskv2.ConnectRequest) (*runtimeoptions.Options, error)) func(*ttrpc.Server) {
		return func(srv *ttrpc.Server) {
			srv.RegisterService(launch.GroupService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{"Join": method(fn)}})
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
			cfg, ok := launch.Join(sock, "c1")
			if ok != tc.wantOK || string(cfg) != tc.wantCfg {
				t.Fatalf("join = %q, %v; want %q, %v", cfg, ok, tc.wantCfg, tc.wantOK)
			}
		})
	}
	if _, ok := launch.Join(shortTempSocket(t), "c1"); ok {
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

func TestMembershipExpires(t *testing.T) {
	m := newMembership(10 * time.Millisecond)
	m.join("c1")
	if !m.waiting() {
		t.Fatal("no pending member right after join")
	}
	time.Sleep(20 * time.Millisecond)
	if m.waiting() {
		t.Fatal("pending member did not expire")
	}
}

// A start that joins a running daemon leaves the daemon's configuration
// in the bundle (ours when the daemon sends none), and the address.
func TestStartJoinsRunningDaemon(t *testing.T) {
	for _, tt := range []struct {
		name      string
		daemonCfg func(ours []byte) []byte
	}{
		{"same configuration", func(ours []byte) []byte { return ours }},
		{"other configuration", func([]byte) []byte { return []byte("grouping = \"namespace\"\nruntime_root = \"/run/other\"\n") }},
		{"older daemon sends none", func([]byte) []byte { return nil }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "shimstart")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			cfgPath := filepath.Join(dir, "shim.toml")
			testutil.WriteFile(t, cfgPath, "grouping = \"namespace\"\nsocket_dir = \""+filepath.Join(dir, "s")+"\"\n", 0o644)
			ours, err := launch.ResolveConfig(nil, cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.daemonCfg(ours.Encode())
			sock, err := launch.SocketPath(filepath.Join(dir, "s"), "", "/run/c.sock", "ns", "")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			members := newMembership(time.Minute)
			serveTTRPC(t, l, func(srv *ttrpc.Server) { registerGroupService(srv, members, want) })

			bundle := filepath.Join(dir, "bundle")
			if err := os.MkdirAll(bundle, 0o755); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			f := launch.Flags{Namespace: "ns", ID: "c2", Address: "/run/c.sock", Bundle: bundle, Config: cfgPath, Action: launch.ActionStart}
			err = launch.Start(context.Background(), f, launch.StartEnv{Stdin: strings.NewReader(""), Stdout: &out, Self: "/nonexistent/must-not-spawn"})
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != launch.Address(sock) {
				t.Fatalf("stdout %q, want %q", out.String(), launch.Address(sock))
			}
			if a, _ := os.ReadFile(filepath.Join(bundle, launch.AddressFile)); string(a) != launch.Address(sock) {
				t.Fatalf("address file %q", a)
			}
			if want == nil {
				want = ours.Encode()
			}
			if saved, _ := os.ReadFile(filepath.Join(bundle, launch.ConfigFile)); !bytes.Equal(saved, want) {
				t.Fatalf("bundle config %q, want %q", saved, want)
			}
			if !members.waiting() {
				t.Fatal("the daemon was not told of the new member")
			}
		})
	}
}
