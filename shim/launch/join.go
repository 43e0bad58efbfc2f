package launch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
)

// GroupService is the shim's own ttrpc service through which `start`
// announces a new member of a group to the daemon that serves it. Its
// Join takes a containerd.task.v2.ConnectRequest (id 1) and answers with
// runtimeoptions.v1.Options whose config_body is the daemon's
// configuration; the daemon's side is in package shim.
const GroupService = "conmon.v2.shim.Group"

// joinTimeout bounds a Join: the dial, the request and the answer.
const joinTimeout = 5 * time.Second

// Join announces id to the daemon listening on sock and returns the
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
func Join(sock, id string) (config []byte, ok bool) {
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
	case code == codeUnimplemented:
		return nil, true
	case code != codeOK:
		return nil, false
	}
	ro, err := decodeRuntimeOptions(payload)
	return ro.configBody, err == nil
}

// ttrpc's framing (github.com/containerd/ttrpc, channel.go): a 10-byte
// header (length, stream id, type, flags; big endian) before each message.
const (
	ttrpcHeaderLen    = 10
	ttrpcTypeRequest  = 1
	ttrpcTypeResponse = 2
	ttrpcMaxMessage   = 4 << 20
)

// The google.rpc.Code values join tells apart (google.golang.org/grpc/codes).
const (
	codeOK            = 0
	codeUnimplemented = 12
)

// joinCall sends one ttrpc request (stream 1) on conn and returns the
// status code and payload of its response.
func joinCall(conn net.Conn, service, method string, payload []byte) (code uint64, _ []byte, _ error) {
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
	var out []byte
	err := eachField(msg, func(num protowire.Number, _ protowire.Type, v []byte, x uint64) {
		switch num {
		case 1:
			_ = eachField(v, func(num protowire.Number, _ protowire.Type, _ []byte, x uint64) {
				if num == 1 {
					code = x
				}
			})
		case 2:
			out = v
		}
	})
	return code, out, err
}

// LockDir takes an exclusive flock on dir and returns its release.
func LockDir(dir string) (func(), error) {
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
