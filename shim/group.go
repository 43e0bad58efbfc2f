package shim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
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
//
// It speaks ttrpc by hand (joinCall): `start` is a short-lived process in
// which everything runs for the first time, and a ttrpc client with the
// protobuf runtime's first marshalling of its three messages cost it about
// 1 ms (a receive goroutine and its thread, reflection-built codecs) for
// one request of a few dozen bytes. The bytes on the wire are a ttrpc
// client's.
func join(sock, id string) (config []byte, ok bool) {
	conn, err := net.DialTimeout("unix", sock, joinTimeout)
	if err != nil {
		return nil, false
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(joinTimeout)); err != nil {
		return nil, false
	}
	code, payload, err := joinCall(conn, GroupService, "Join", protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), id))
	switch {
	case err != nil:
		return nil, false
	case code == codes.Unimplemented:
		return nil, true
	case code != codes.OK:
		return nil, false
	}
	config, err = optionsConfigBody(payload)
	return config, err == nil
}

// joinTimeout bounds a Join: the dial, the request and the answer.
const joinTimeout = 5 * time.Second

// ttrpc's framing (github.com/containerd/ttrpc, channel.go): a 10-byte
// header (length, stream id, type, flags; big endian) before each message.
const (
	ttrpcHeaderLen    = 10
	ttrpcTypeRequest  = 1
	ttrpcTypeResponse = 2
	ttrpcMaxMessage   = 4 << 20
)

// joinCall sends one ttrpc request (stream 1) on conn and returns the
// status code and payload of its response.
func joinCall(conn net.Conn, service, method string, payload []byte) (codes.Code, []byte, error) {
	// ttrpc.Request: service 1, method 2, payload 3, timeout_nano 4.
	req := make([]byte, ttrpcHeaderLen, ttrpcHeaderLen+64+len(service)+len(method)+len(payload))
	req = protowire.AppendString(protowire.AppendTag(req, 1, protowire.BytesType), service)
	req = protowire.AppendString(protowire.AppendTag(req, 2, protowire.BytesType), method)
	req = protowire.AppendBytes(protowire.AppendTag(req, 3, protowire.BytesType), payload)
	req = protowire.AppendVarint(protowire.AppendTag(req, 4, protowire.VarintType), uint64(joinTimeout.Nanoseconds()))
	binary.BigEndian.PutUint32(req[0:4], uint32(len(req)-ttrpcHeaderLen))
	binary.BigEndian.PutUint32(req[4:8], 1)
	req[8], req[9] = ttrpcTypeRequest, 0
	if _, err := conn.Write(req); err != nil {
		return 0, nil, err
	}
	var hdr [ttrpcHeaderLen]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[0:4])
	if hdr[8] != ttrpcTypeResponse || binary.BigEndian.Uint32(hdr[4:8]) != 1 || n > ttrpcMaxMessage {
		return 0, nil, fmt.Errorf("ttrpc: unexpected message (type %d, stream %d, %d bytes)", hdr[8], binary.BigEndian.Uint32(hdr[4:8]), n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(conn, msg); err != nil {
		return 0, nil, err
	}
	// ttrpc.Response: status 1 (google.rpc.Status: code 1), payload 2.
	var code codes.Code
	var out []byte
	err := eachField(msg, func(num protowire.Number, _ protowire.Type, v []byte, x uint64) {
		switch num {
		case 1:
			_ = eachField(v, func(num protowire.Number, _ protowire.Type, _ []byte, x uint64) {
				if num == 1 {
					code = codes.Code(x)
				}
			})
		case 2:
			out = v
		}
	})
	return code, out, err
}

// optionsConfigBody returns config_body (field 3) of a serialized
// containerd runtimeoptions.v1.Options.
func optionsConfigBody(b []byte) ([]byte, error) {
	var body []byte
	err := eachField(b, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) {
		if num == 3 {
			body = v
		}
	})
	return body, err
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
