package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GroupService is the shim's own ttrpc service through which `start`
// announces a new member of a group to the daemon that serves it.
const GroupService = "conmon.v2.shim.Group"

// joinTTL is how long an announced member keeps the daemon alive without
// its Create arriving (containerd sends Create right after start).
const joinTTL = 30 * time.Second

// membership holds the members announced by Join whose Create has not come
// yet.
type membership struct {
	ttl     time.Duration
	mu      sync.Mutex
	pending map[string]time.Time // id -> expiry; guarded by mu
}

func newMembership(ttl time.Duration) *membership {
	return &membership{ttl: ttl, pending: make(map[string]time.Time)}
}

func (m *membership) join(id string) {
	m.mu.Lock()
	m.pending[id] = time.Now().Add(m.ttl)
	m.mu.Unlock()
}

func (m *membership) created(id string) {
	m.mu.Lock()
	delete(m.pending, id)
	m.mu.Unlock()
}

func (m *membership) clear() {
	m.mu.Lock()
	clear(m.pending)
	m.mu.Unlock()
}

// waiting reports whether an announced member is still expected.
func (m *membership) waiting() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for id, exp := range m.pending {
		if now.After(exp) {
			delete(m.pending, id)
		}
	}
	return len(m.pending) > 0
}

// registerGroupService serves Join(ConnectRequest{id}) on srv. The answer
// carries the daemon's configuration as runtime options (config_body), so
// the new member's bundle records the settings that really apply to it.
// The messages are containerd API types; no new proto is needed.
func registerGroupService(srv *ttrpc.Server, m *membership, config []byte) {
	srv.RegisterService(GroupService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Join": method(func(ctx context.Context, req *taskv2.ConnectRequest) (*runtimeoptions.Options, error) {
			if err := ValidateIdentifier("id", req.GetID()); err != nil {
				return nil, err
			}
			m.join(req.GetID())
			return &runtimeoptions.Options{ConfigBody: config}, nil
		}),
	}})
}

// join announces id to the daemon listening on sock and returns the
// daemon's configuration (TOML; nil if it sent none). ok is false when no
// daemon answers (the socket is stale). A daemon of an older build,
// without the Group service, counts as joined.
func join(sock, id string) (config []byte, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, false
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	var resp runtimeoptions.Options
	err = client.Call(ctx, GroupService, "Join", &taskv2.ConnectRequest{ID: id}, &resp)
	if err != nil {
		return nil, status.Code(err) == codes.Unimplemented
	}
	return resp.GetConfigBody(), true
}

// lockDir takes an exclusive flock on dir and returns its release.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
