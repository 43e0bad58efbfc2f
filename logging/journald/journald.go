// Package journald is the journald log driver: it sends each container line
// to systemd-journald over the native protocol (a datagram on
// /run/systemd/journal/socket), without cgo and without libsystemd.
//
// Entries carry the fields conmon writes (MESSAGE, CONTAINER_ID,
// CONTAINER_ID_FULL, CONTAINER_NAME, CONTAINER_TAG, SYSLOG_IDENTIFIER,
// PRIORITY), so `podman logs` and `journalctl CONTAINER_ID_FULL=…` read them
// as they read conmon's, plus one field per container label.
//
// Differences from conmon, each answering a known complaint:
//   - Long lines are not split (conmon#335, podman#16059): partial records
//     are reassembled into one entry up to the max-line-size option (1 MiB by
//     default); entries too big for a datagram travel in a sealed memfd, as
//     journald's protocol allows.
//   - The priority is not fixed (podman#20728, conmon#595): a line starting
//     with an sd-daemon prefix "<N>" (N in 0..7) is logged at priority N and
//     the prefix is removed; other lines get 6 (stdout) or 3 (stderr).
//   - CONTAINER_PARTIAL_MESSAGE=true is written only when the partial-message
//     option asks for it, on entries that do not end a line.
//
// Write blocks while journald's receive queue is full (journald slow or
// stopped): in the pipeline's blocking mode the container then waits, in
// non-blocking mode the pipeline drops and counts. A journald that is gone
// (no socket) makes writes fail at once; a restarted one is found again,
// since every datagram is addressed to the socket path.
//
// Options:
//
//	socket          the journal socket (default /run/systemd/journal/socket)
//	max-line-size   bytes of one reassembled line (default 1048576; 0 writes
//	                every record as its own entry, as conmon does)
//	partial-message "true" to mark entries that do not end a line
package journald

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// Name is the driver's registry name.
const Name = "journald"

// DefaultSocket is where journald listens for native-protocol datagrams.
const DefaultSocket = "/run/systemd/journal/socket"

// DefaultMaxLineSize bounds the reassembly of one line (bytes).
const DefaultMaxLineSize = 1 << 20

const (
	priorityStdout = 6 // LOG_INFO, as conmon
	priorityStderr = 3 // LOG_ERR, as conmon
)

// Driver writes records to journald. It is safe for concurrent use.
type Driver struct {
	addr        *unix.SockaddrUnix
	path        string
	maxLine     int
	markPartial bool

	// fixed holds the encoded fields that are the same on every entry
	// (everything but MESSAGE, PRIORITY and CONTAINER_PARTIAL_MESSAGE).
	fixed []byte

	mu      sync.Mutex // guards everything below
	fd      int        // datagram socket; -1 once closed
	pending [3][]byte  // per stream: a line being reassembled from partial records
	buf     []byte     // the entry being encoded
}

var _ logging.Driver = (*Driver)(nil)

// New is the driver's logging.Factory.
func New(_ context.Context, info logging.Info) (logging.Driver, error) {
	return newDriver(info)
}

func newDriver(info logging.Info) (*Driver, error) {
	d := &Driver{path: DefaultSocket, maxLine: DefaultMaxLineSize, fd: -1}
	for k, v := range info.Options {
		switch k {
		case "socket":
			if v == "" {
				return nil, fmt.Errorf("journald: option socket is empty: %w", errdefs.ErrInvalidArgument)
			}
			d.path = v
		case "max-line-size":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("journald: option max-line-size=%q: want a byte count >= 0: %w", v, errdefs.ErrInvalidArgument)
			}
			d.maxLine = n
		case "partial-message":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("journald: option partial-message=%q: want true or false: %w", v, errdefs.ErrInvalidArgument)
			}
			d.markPartial = b
		default:
			if logging.IsCommonOption(k) {
				continue // file options, for other drivers
			}
			return nil, fmt.Errorf("journald: unknown option %q: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	fixed, err := fixedFields(&info.Meta)
	if err != nil {
		return nil, err
	}
	d.fixed = fixed
	if len(d.path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("journald: socket path %q is too long: %w", d.path, errdefs.ErrInvalidArgument)
	}
	if fi, err := os.Stat(d.path); err != nil {
		return nil, fmt.Errorf("journald: socket %s (is systemd-journald running?): %w", d.path, errors.Join(err, errdefs.ErrUnavailable))
	} else if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("journald: %s is not a socket: %w", d.path, errdefs.ErrInvalidArgument)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("journald: socket: %w", err)
	}
	// A large send buffer lets bursts queue in the kernel instead of
	// blocking the container, as libsystemd does (8 MiB; the kernel caps it
	// at wmem_max without CAP_NET_ADMIN).
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20)
	d.fd = fd
	d.addr = &unix.SockaddrUnix{Name: d.path}
	return d, nil
}

// fixedFields encodes the per-container fields once.
func fixedFields(m *logging.Metadata) ([]byte, error) {
	if m.ID == "" {
		return nil, fmt.Errorf("journald: container ID is empty: %w", errdefs.ErrInvalidArgument)
	}
	var b []byte
	b = appendField(b, "CONTAINER_ID_FULL", []byte(m.ID))
	short := m.ID
	if len(short) > 12 {
		short = short[:12]
	}
	b = appendField(b, "CONTAINER_ID", []byte(short))
	if m.Tag != "" {
		b = appendField(b, "CONTAINER_TAG", []byte(m.Tag))
	}
	if m.Name != "" {
		b = appendField(b, "CONTAINER_NAME", []byte(m.Name))
	}
	ident := m.Tag
	if ident == "" {
		ident = m.Name
	}
	if ident == "" {
		ident = short
	}
	b = appendField(b, "SYSLOG_IDENTIFIER", []byte(ident))

	// Labels, in a stable order so entries are reproducible.
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	seen := map[string]string{}
	for _, k := range keys {
		name, err := FieldName(k)
		if err != nil {
			return nil, err
		}
		if reserved[name] {
			return nil, fmt.Errorf("journald: label %q maps to field %s, which the driver writes itself: %w", k, name, errdefs.ErrInvalidArgument)
		}
		if prev, ok := seen[name]; ok {
			return nil, fmt.Errorf("journald: labels %q and %q both map to field %s: %w", prev, k, name, errdefs.ErrInvalidArgument)
		}
		seen[name] = k
		b = appendField(b, name, []byte(m.Labels[k]))
	}
	return b, nil
}

// reserved are the fields the driver sets; a label may not replace them.
var reserved = map[string]bool{
	"MESSAGE": true, "PRIORITY": true, "CONTAINER_ID": true, "CONTAINER_ID_FULL": true,
	"CONTAINER_NAME": true, "CONTAINER_TAG": true, "SYSLOG_IDENTIFIER": true,
	"CONTAINER_PARTIAL_MESSAGE": true,
}

// FieldName turns a label key into a journal field name: upper case, every
// byte outside [A-Z0-9_] replaced by '_', leading underscores removed
// (journald reserves them for trusted fields) and a leading digit prefixed
// with "L_"; at most 64 bytes. A key with nothing usable is an error naming it.
func FieldName(key string) (string, error) {
	var sb strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		default:
			c = '_'
		}
		sb.WriteByte(c)
	}
	name := strings.TrimLeft(sb.String(), "_")
	if name != "" && name[0] >= '0' && name[0] <= '9' {
		name = "L_" + name
	}
	if len(name) > 64 {
		name = name[:64]
	}
	if strings.Trim(name, "_") == "" {
		return "", fmt.Errorf("journald: label %q gives no usable field name: %w", key, errdefs.ErrInvalidArgument)
	}
	return name, nil
}

// appendField encodes one field of the native protocol. Values without a
// newline use the text form NAME=value\n; others the binary-safe form
// NAME\n<uint64 little-endian length><value>\n.
func appendField(b []byte, name string, value []byte) []byte {
	b = append(b, name...)
	if bytes.IndexByte(value, '\n') < 0 {
		b = append(b, '=')
		b = append(b, value...)
		return append(b, '\n')
	}
	b = append(b, '\n')
	b = binary.LittleEndian.AppendUint64(b, uint64(len(value)))
	b = append(b, value...)
	return append(b, '\n')
}

// Write sends r, or holds it when it is a partial record that reassembly
// will complete.
func (d *Driver) Write(r *logging.Record) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return fmt.Errorf("journald: write after close: %w", errdefs.ErrFailedPrecondition)
	}
	s := streamIndex(r.Stream)
	if d.maxLine == 0 {
		return d.sendLocked(r.Stream, r.Line, !r.Partial)
	}
	if r.Partial {
		p := append(d.pending[s], r.Line...)
		if len(p) < d.maxLine {
			d.pending[s] = p
			return nil
		}
		// The line outgrew the limit: send what we have as a partial entry
		// and start over, so memory stays bounded.
		d.pending[s] = p[:0]
		return d.sendLocked(r.Stream, p, false)
	}
	if len(d.pending[s]) == 0 {
		return d.sendLocked(r.Stream, r.Line, true)
	}
	p := append(d.pending[s], r.Line...)
	d.pending[s] = p[:0]
	return d.sendLocked(r.Stream, p, true)
}

func streamIndex(s logging.Stream) int {
	if s == logging.Stderr {
		return 2
	}
	return 1
}

// sendLocked encodes and sends one entry. complete tells whether msg ends a
// line: conmon's MESSAGE then ends with '\n' (Podman trims it), otherwise
// the entry is partial.
func (d *Driver) sendLocked(stream logging.Stream, msg []byte, complete bool) error {
	prio := priorityStdout
	if stream == logging.Stderr {
		prio = priorityStderr
	}
	if len(msg) >= 3 && msg[0] == '<' && msg[1] >= '0' && msg[1] <= '7' && msg[2] == '>' {
		prio = int(msg[1] - '0')
		msg = msg[3:]
	}
	b := d.buf[:0]
	b = append(b, "MESSAGE"...)
	n := len(msg)
	if complete {
		n++
	}
	// MESSAGE always holds a newline when complete, so the binary form.
	if complete || bytes.IndexByte(msg, '\n') >= 0 {
		b = append(b, '\n')
		b = binary.LittleEndian.AppendUint64(b, uint64(n))
		b = append(b, msg...)
		if complete {
			b = append(b, '\n')
		}
		b = append(b, '\n')
	} else {
		b = append(b, '=')
		b = append(b, msg...)
		b = append(b, '\n')
	}
	b = append(b, d.fixed...)
	b = append(b, "PRIORITY="...)
	b = append(b, byte('0'+prio), '\n')
	if !complete && d.markPartial {
		b = append(b, "CONTAINER_PARTIAL_MESSAGE=true\n"...)
	}
	d.buf = b
	if cap(d.buf) > 4<<20 {
		d.buf = nil // do not keep a huge entry's buffer forever
	}
	return d.sendEntry(b)
}

// sendEntry sends one encoded entry as a datagram, or, when it is too big
// for one, through a sealed memfd passed with SCM_RIGHTS.
func (d *Driver) sendEntry(b []byte) error {
	err := unix.Sendmsg(d.fd, b, nil, d.addr, 0)
	for errors.Is(err, unix.EINTR) {
		err = unix.Sendmsg(d.fd, b, nil, d.addr, 0)
	}
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EMSGSIZE) && !errors.Is(err, unix.ENOBUFS) {
		return fmt.Errorf("journald: send to %s: %w", d.path, err)
	}
	return d.sendMemfd(b)
}

func (d *Driver) sendMemfd(b []byte) error {
	mfd, err := unix.MemfdCreate("journal-entry", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return fmt.Errorf("journald: memfd_create: %w", err)
	}
	defer unix.Close(mfd)
	for off := 0; off < len(b); {
		n, err := unix.Write(mfd, b[off:])
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("journald: write memfd: %w", err)
		}
		off += n
	}
	// journald only accepts a memfd it can trust not to change.
	if _, err := unix.FcntlInt(uintptr(mfd), unix.F_ADD_SEALS,
		unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL); err != nil {
		return fmt.Errorf("journald: seal memfd: %w", err)
	}
	oob := unix.UnixRights(mfd)
	for {
		err = unix.Sendmsg(d.fd, nil, oob, d.addr, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("journald: send memfd to %s: %w", d.path, err)
	}
	return nil
}

// Reopen does nothing: each entry is addressed to the socket path, so a
// restarted journald is found again without reopening.
func (d *Driver) Reopen() error { return nil }

// Close flushes lines still being reassembled (as partial entries) and
// closes the socket.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return nil
	}
	var errs []error
	for s, p := range d.pending {
		if len(p) > 0 {
			st := logging.Stdout
			if s == 2 {
				st = logging.Stderr
			}
			errs = append(errs, d.sendLocked(st, p, false))
			d.pending[s] = nil
		}
	}
	errs = append(errs, unix.Close(d.fd))
	d.fd = -1
	return errors.Join(errs...)
}
