package shim

import (
	"context"
	"sync"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/ttrpc"

	"github.com/containers/conmon-v2/shim/launch"
)

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
	srv.RegisterService(launch.GroupService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Join": method(func(ctx context.Context, req *taskv2.ConnectRequest) (*runtimeoptions.Options, error) {
			if err := launch.ValidateIdentifier("id", req.GetID()); err != nil {
				return nil, err
			}
			m.join(req.GetID())
			return &runtimeoptions.Options{ConfigBody: config}, nil
		}),
	}})
}
