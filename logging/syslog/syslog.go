// Package syslog is the syslog log driver: each container line becomes one
// syslog message, formatted per RFC 5424 or RFC 3164 and sent over a unix
// socket (datagram or stream), UDP, TCP or TCP with TLS.
//
// Options:
//
//	address          unixgram:///dev/log (default), unix:///path (stream),
//	                 udp://host:port, tcp://host:port, tcp+tls://host:port
//	format           rfc5424 or rfc3164; default rfc3164 on unix sockets
//	                 (what local syslog daemons parse), rfc5424 otherwise
//	facility         a name (kern … local7) or number 0..23; default daemon
//	tag              APP-NAME / TAG; default the container's tag, else its
//	                 name, else its 12-character ID
//	tls-ca           PEM file of CAs that verify the server (tcp+tls)
//	tls-cert, tls-key PEM client certificate and key (tcp+tls)
//	tls-skip-verify  "true" to accept any server certificate (tests only)
//
//	max-line-size    bytes of one line reassembled from partial records
//	                 (default 60000, which fits a UDP datagram); a longer
//	                 line is sent in pieces of that size; 0 sends every
//	                 record as its own message
//
// The severity is info for stdout and err for stderr; a line starting with
// an sd-daemon prefix "<N>" (N in 0..7) gets severity N, prefix removed.
//
// Framing: one message per datagram; on stream transports RFC 5424 uses
// octet counting ("LEN SP MSG", RFC 6587 3.4.1) so messages may hold any
// byte, and RFC 3164 ends each message with a newline.
//
// A write blocks while the receiver does not read (at most 10 s on stream
// transports, then it fails and is counted). Stream connections are
// re-dialled after an error, with a backoff between
// attempts (100 ms doubling to 5 s); a write that finds no connection fails
// and is counted by the pipeline.
package syslog

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// Name is the driver's registry name.
const Name = "syslog"

// DefaultMaxLineSize bounds the reassembly of one line (bytes).
const DefaultMaxLineSize = 60000

// DefaultAddress is the local syslog socket.
const DefaultAddress = "unixgram:///dev/log"

const (
	dialTimeout  = 5 * time.Second
	writeTimeout = 10 * time.Second
	minBackoff   = 100 * time.Millisecond
	maxBackoff   = 5 * time.Second
)

// Format is a syslog message format.
type Format int

const (
	// RFC5424 is "<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG".
	RFC5424 Format = iota
	// RFC3164 is "<PRI>Mmm dd hh:mm:ss HOST TAG: MSG" (no HOST on unix sockets).
	RFC3164
)

var facilities = map[string]int{
	"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
	"uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
	"local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

// Driver sends records to a syslog receiver. It is safe for concurrent use.
type Driver struct {
	network  string // unixgram, unix, udp, tcp, tcp+tls
	addr     string // path or host:port
	address  string // as configured, for errors
	format   Format
	facility int
	tag      string
	hostname string
	tlsConf  *tls.Config
	stream   bool // byte-stream transport: frame messages
	maxLine  int

	mu      sync.Mutex // guards below
	conn    net.Conn   // nil when disconnected
	probe   probe      // for conn
	closed  bool
	backoff time.Duration
	nextTry time.Time
	buf     []byte
	pending [3][]byte // per stream: a line being reassembled from partial records
}

var _ logging.Driver = (*Driver)(nil)

// New is the driver's logging.Factory. It dials the receiver so that a bad
// address is reported when the container is created.
func New(ctx context.Context, info logging.Info) (logging.Driver, error) {
	d, err := newDriver(info)
	if err != nil {
		return nil, err
	}
	conn, err := d.dial(ctx)
	if err != nil {
		return nil, err
	}
	d.setConnLocked(conn)
	return d, nil
}

func newDriver(info logging.Info) (*Driver, error) {
	d := &Driver{facility: 3, maxLine: DefaultMaxLineSize}
	address := DefaultAddress
	format := ""
	var caFile, certFile, keyFile string
	skipVerify := false
	for k, v := range info.Options {
		switch k {
		case "address":
			address = v
		case "format":
			format = v
		case "facility":
			f, ok := facilities[v]
			if !ok {
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 || n > 23 {
					return nil, fmt.Errorf("syslog: option facility=%q: want a name (kern, user, daemon, local0..local7, …) or 0..23: %w", v, errdefs.ErrInvalidArgument)
				}
				f = n
			}
			d.facility = f
		case "tag":
			d.tag = v
		case "max-line-size":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("syslog: option max-line-size=%q: want a byte count >= 0: %w", v, errdefs.ErrInvalidArgument)
			}
			d.maxLine = n
		case "tls-ca":
			caFile = v
		case "tls-cert":
			certFile = v
		case "tls-key":
			keyFile = v
		case "tls-skip-verify":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("syslog: option tls-skip-verify=%q: want true or false: %w", v, errdefs.ErrInvalidArgument)
			}
			skipVerify = b
		default:
			if logging.IsCommonOption(k) {
				continue // file options, for other drivers
			}
			return nil, fmt.Errorf("syslog: unknown option %q: %w", k, errdefs.ErrInvalidArgument)
		}
	}
	if err := d.parseAddress(address); err != nil {
		return nil, err
	}
	switch format {
	case "":
		if d.network == "unix" || d.network == "unixgram" {
			d.format = RFC3164
		}
	case "rfc5424":
		d.format = RFC5424
	case "rfc3164":
		d.format = RFC3164
	default:
		return nil, fmt.Errorf("syslog: option format=%q: want rfc5424 or rfc3164: %w", format, errdefs.ErrInvalidArgument)
	}
	if d.network != "tcp+tls" && (caFile != "" || certFile != "" || keyFile != "" || skipVerify) {
		return nil, fmt.Errorf("syslog: tls-* options need a tcp+tls address, not %q: %w", address, errdefs.ErrInvalidArgument)
	}
	if d.network == "tcp+tls" {
		conf, err := tlsConfig(d.addr, caFile, certFile, keyFile, skipVerify)
		if err != nil {
			return nil, err
		}
		d.tlsConf = conf
	}
	if d.tag == "" {
		d.tag = info.Meta.Tag
	}
	if d.tag == "" {
		d.tag = info.Meta.Name
	}
	if d.tag == "" {
		d.tag = info.Meta.ID
		if len(d.tag) > 12 {
			d.tag = d.tag[:12]
		}
	}
	if d.tag == "" {
		return nil, fmt.Errorf("syslog: no tag: set the tag option or give the container an ID: %w", errdefs.ErrInvalidArgument)
	}
	d.tag = sanitizeTag(d.tag, d.format)
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "-"
	}
	d.hostname = h
	return d, nil
}

func (d *Driver) parseAddress(address string) error {
	d.address = address
	u, err := url.Parse(address)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("syslog: option address=%q: want scheme://host:port or unix[gram]:///path: %w", address, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "unix", "unixgram":
		if u.Path == "" || u.Host != "" {
			return fmt.Errorf("syslog: option address=%q: want %s:///absolute/path: %w", address, u.Scheme, errdefs.ErrInvalidArgument)
		}
		d.addr = u.Path
		d.stream = u.Scheme == "unix"
	case "udp", "tcp", "tcp+tls":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" || (u.Path != "" && u.Path != "/") {
			return fmt.Errorf("syslog: option address=%q: want %s://host:port: %w", address, u.Scheme, errdefs.ErrInvalidArgument)
		}
		if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			return fmt.Errorf("syslog: option address=%q: bad port %q: %w", address, port, errdefs.ErrInvalidArgument)
		}
		d.addr = u.Host
		d.stream = u.Scheme != "udp"
	default:
		return fmt.Errorf("syslog: option address=%q: scheme %q is not one of unix, unixgram, udp, tcp, tcp+tls: %w", address, u.Scheme, errdefs.ErrInvalidArgument)
	}
	d.network = u.Scheme
	return nil
}

func tlsConfig(addr, caFile, certFile, keyFile string, skipVerify bool) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(addr)
	conf := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, InsecureSkipVerify: skipVerify} //nolint:gosec // opt-in, documented as for tests
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("syslog: option tls-ca: %w", errors.Join(err, errdefs.ErrInvalidArgument))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("syslog: option tls-ca: no PEM certificate in %s: %w", caFile, errdefs.ErrInvalidArgument)
		}
		conf.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("syslog: options tls-cert and tls-key go together: %w", errdefs.ErrInvalidArgument)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("syslog: options tls-cert/tls-key: %w", errors.Join(err, errdefs.ErrInvalidArgument))
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// sanitizeTag keeps the tag printable and space-free (RFC 5424 APP-NAME is
// at most 48 printable ASCII characters; RFC 3164's TAG at most 32).
func sanitizeTag(tag string, f Format) string {
	limit := 48
	if f == RFC3164 {
		limit = 32
	}
	b := []byte(tag)
	for i, c := range b {
		if c <= 32 || c >= 127 || c == ':' || c == '[' || c == ']' {
			b[i] = '_'
		}
	}
	if len(b) > limit {
		b = b[:limit]
	}
	return string(b)
}

func (d *Driver) dial(ctx context.Context) (net.Conn, error) {
	var (
		conn net.Conn
		err  error
	)
	dialer := &net.Dialer{Timeout: dialTimeout}
	switch d.network {
	case "tcp+tls":
		td := &tls.Dialer{NetDialer: dialer, Config: d.tlsConf}
		conn, err = td.DialContext(ctx, "tcp", d.addr)
	default:
		conn, err = dialer.DialContext(ctx, d.network, d.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("syslog: dial %s: %w", d.address, errors.Join(err, errdefs.ErrUnavailable))
	}
	return conn, nil
}

// Write sends r as one message, or holds it while partial records are
// reassembled into a line.
func (d *Driver) Write(r *logging.Record) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("syslog: write after close: %w", errdefs.ErrFailedPrecondition)
	}
	if d.maxLine == 0 {
		return d.sendRecordLocked(r)
	}
	s := 1
	if r.Stream == logging.Stderr {
		s = 2
	}
	if r.Partial {
		p := append(d.pending[s], r.Line...)
		if len(p) < d.maxLine {
			d.pending[s] = p
			return nil
		}
		d.pending[s] = p[:0]
		return d.sendRecordLocked(&logging.Record{Time: r.Time, Stream: r.Stream, Line: p, Partial: true, Meta: r.Meta})
	}
	if len(d.pending[s]) == 0 {
		return d.sendRecordLocked(r)
	}
	p := append(d.pending[s], r.Line...)
	d.pending[s] = p[:0]
	return d.sendRecordLocked(&logging.Record{Time: r.Time, Stream: r.Stream, Line: p, Meta: r.Meta})
}

func (d *Driver) sendRecordLocked(r *logging.Record) error {
	d.buf = d.format1(d.buf[:0], r)
	if d.conn != nil && d.stream && d.probe.gone() {
		// Writing into a connection the receiver already closed would
		// "succeed" and lose the message with the reset that follows.
		d.conn.Close()
		d.conn = nil
		d.nextTry = time.Time{}
	}
	if d.conn == nil {
		if err := d.redialLocked(); err != nil {
			return err
		}
	}
	err := d.sendLocked()
	if err == nil {
		return nil
	}
	// The receiver restarted (a broken stream, or a connected datagram
	// socket whose peer socket file was recreated): reconnect at once and
	// resend, so one restart loses nothing.
	d.conn.Close()
	d.conn = nil
	d.nextTry = time.Time{}
	if rerr := d.redialLocked(); rerr != nil {
		return errors.Join(fmt.Errorf("syslog: send to %s: %w", d.address, err), rerr)
	}
	if err := d.sendLocked(); err != nil {
		d.conn.Close()
		d.conn = nil
		return fmt.Errorf("syslog: send to %s: %w", d.address, err)
	}
	return nil
}

func (d *Driver) sendLocked() error {
	if d.stream {
		_ = d.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	}
	_, err := d.conn.Write(d.buf)
	if cap(d.buf) > 1<<20 {
		d.buf = nil
	}
	return err
}

// redialLocked dials unless the backoff since the last failure has not
// elapsed.
func (d *Driver) redialLocked() error {
	now := time.Now()
	if now.Before(d.nextTry) {
		return fmt.Errorf("syslog: %s unreachable, next attempt in %v: %w", d.address, d.nextTry.Sub(now).Round(time.Millisecond), errdefs.ErrUnavailable)
	}
	conn, err := d.dial(context.Background())
	if err != nil {
		d.backoff = min(max(2*d.backoff, minBackoff), maxBackoff)
		d.nextTry = now.Add(d.backoff)
		return err
	}
	d.backoff = 0
	d.setConnLocked(conn)
	return nil
}

// format1 appends r's message, framed for the transport.
func (d *Driver) format1(b []byte, r *logging.Record) []byte {
	sev := 6
	if r.Stream == logging.Stderr {
		sev = 3
	}
	line := r.Line
	if len(line) >= 3 && line[0] == '<' && line[1] >= '0' && line[1] <= '7' && line[2] == '>' {
		sev = int(line[1] - '0')
		line = line[3:]
	}
	ts := r.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	start := len(b)
	if d.stream && d.format == RFC5424 {
		// Reserve room for the octet count; fixed up below.
		b = append(b, "0000000000 "...)
	}
	msgStart := len(b)
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(d.facility*8+sev), 10)
	b = append(b, '>')
	if d.format == RFC5424 {
		b = append(b, "1 "...)
		b = ts.AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
		b = append(b, ' ')
		b = append(b, d.hostname...)
		b = append(b, ' ')
		b = append(b, d.tag...)
		b = append(b, " - "...) // PROCID
		b = append(b, r.Stream.String()...)
		b = append(b, " - "...) // MSGID, then no structured data
		b = append(b, line...)
	} else {
		b = ts.AppendFormat(b, time.Stamp)
		b = append(b, ' ')
		if d.network != "unix" && d.network != "unixgram" {
			// Local daemons take the host from the socket; remote ones
			// expect it in the header.
			b = append(b, d.hostname...)
			b = append(b, ' ')
		}
		b = append(b, d.tag...)
		b = append(b, ": "...)
		b = append(b, line...)
	}
	if d.stream {
		if d.format == RFC5424 {
			n := strconv.Itoa(len(b) - msgStart)
			// Shift the message left over the unused reserved digits.
			pad := 10 - len(n)
			copy(b[start:], n)
			b[start+len(n)] = ' '
			copy(b[start+len(n)+1:], b[msgStart:])
			b = b[:len(b)-pad]
		} else {
			b = append(b, '\n')
		}
	}
	return b
}

// Reopen drops the current connection; the next write dials again.
func (d *Driver) Reopen() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
		d.nextTry = time.Time{}
	}
	return nil
}

// Close sends a line still being reassembled and closes the connection.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	var errs []error
	for s, p := range d.pending {
		if len(p) > 0 {
			errs = append(errs, d.sendRecordLocked(&logging.Record{Stream: logging.Stream(s), Line: p, Partial: true}))
			d.pending[s] = nil
		}
	}
	d.closed = true
	if d.conn != nil {
		errs = append(errs, d.conn.Close())
		d.conn = nil
	}
	return errors.Join(errs...)
}

// String returns the format's option value.
func (f Format) String() string {
	if f == RFC3164 {
		return "rfc3164"
	}
	return "rfc5424"
}

// setConnLocked installs a new connection and its probe.
func (d *Driver) setConnLocked(c net.Conn) {
	d.conn = c
	d.probe = probe{}
	if !d.stream {
		return
	}
	nc := c
	if tc, ok := c.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			d.probe.rc = rc
			d.probe.fn = d.probe.peek
		}
	}
}

// probe tells whether a stream's receiver closed it. Syslog receivers never
// send, so a readable socket means EOF or a reset; it is checked with a
// non-blocking MSG_PEEK before each write. (Over TLS, bytes the server sent,
// such as session tickets, hide a later EOF; the write error path catches
// that case.) Its function value is bound once, so a check allocates
// nothing.
type probe struct {
	rc     syscall.RawConn
	fn     func(fd uintptr) bool
	isGone bool
	buf    [1]byte
}

func (p *probe) peek(fd uintptr) bool {
	// The raw system call: unix.Recvfrom allocates for the source address.
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.buf[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	p.isGone = errno == 0 && n == 0 || errno != 0 && errno != unix.EAGAIN && errno != unix.EINTR
	return true // never wait for readiness
}

func (p *probe) gone() bool {
	if p.rc == nil {
		return false
	}
	p.isGone = false
	_ = p.rc.Read(p.fn)
	return p.isGone
}
