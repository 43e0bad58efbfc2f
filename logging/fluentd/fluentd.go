// Package fluentd is the fluentd log driver: records are sent with
// fluentd's forward protocol (github.com/fluent/fluent-logger-golang, the
// client Docker's driver uses) asynchronously, through a bounded buffer,
// reconnecting with backoff while the receiver is away.
//
// Each record becomes an event with the fields container_id (full ID),
// container_name, source ("stdout" or "stderr"), log (the line) and, for a
// record the next one continues, partial_message="true"; container labels
// are added as further fields (never replacing those).
//
// Options:
//
//	address         host:port, tcp://host:port, tls://host:port or
//	                unix:///path (default localhost:24224)
//	tag             a text/template over {{.ID}} (12 characters),
//	                {{.FullID}}, {{.Name}}, {{.Namespace}}, {{.Tag}} and
//	                {{.Labels}}; default the container's tag, else {{.ID}}
//	buffer-limit    events queued while the receiver is slow or away
//	                (default 8192); a write that finds it full fails and is
//	                counted by the pipeline
//	retry-wait      first reconnect delay (default 500ms), growing ×1.5
//	                up to max-retry-wait (default 5s)
//	max-retries     attempts per event before it is dropped (default 60,
//	                at most 80)
//	request-ack     "true" for at-least-once delivery (the receiver acks
//	                each chunk)
//	write-timeout   bound on one network write (default 10s)
//	close-timeout   how long Close waits for queued events (default 10s)
//	tls-skip-verify "true" to accept any certificate with tls:// (tests)
//
// Events lost (buffer full, retries exhausted, not sent by close-timeout)
// are counted; Close reports them.
package fluentd

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	"github.com/containerd/errdefs"
	"github.com/fluent/fluent-logger-golang/fluent"
	"github.com/tinylib/msgp/msgp"

	"github.com/containers/conmon-v2/logging"
)

// Name is the driver's registry name.
const Name = "fluentd"

const (
	defaultMaxRetries = 60
	// maxMaxRetries keeps the client's backoff (RetryWait·1.5^i ms) inside
	// an int: past about 90 attempts it overflows and would spin.
	maxMaxRetries = 80
)

// Driver sends records to a fluentd forward receiver. Safe for concurrent
// use.
type Driver struct {
	client       *fluent.Fluent
	tag          string
	closeTimeout time.Duration
	fixed        []byte // encoded container_id, container_name and labels
	nfixed       uint32 // number of map entries in fixed

	inflight      atomic.Int64  // events handed to the client and not yet settled
	inflightBytes atomic.Int64  // their log bytes
	dropped       atomic.Uint64 // events the client gave up on
	droppedBytes  atomic.Uint64 // their log bytes
	closed        atomic.Bool
	closeMu       sync.Mutex
}

var (
	_ logging.Driver = (*Driver)(nil)
	_ logging.Loser  = (*Driver)(nil)
)

// TagData is what the tag template sees.
type TagData struct {
	ID, FullID, Name, Namespace, Tag string
	Labels                           map[string]string
}

// New is the driver's logging.Factory. It does not wait for the receiver:
// events queue until it answers.
func New(_ context.Context, info logging.Info) (logging.Driver, error) {
	cfg := fluent.Config{
		Async:              true,
		ForceStopAsyncSend: true, // Close bounds its own wait, see Close
		SubSecondPrecision: true,
		BufferLimit:        8192,
		RetryWait:          500,
		MaxRetryWait:       5000,
		MaxRetry:           defaultMaxRetries,
		WriteTimeout:       10 * time.Second,
		ReadTimeout:        10 * time.Second,
		Timeout:            3 * time.Second,
		FluentNetwork:      "tcp",
		FluentHost:         "localhost",
		FluentPort:         24224,
	}
	d := &Driver{closeTimeout: 10 * time.Second}
	tagTmpl := ""
	for k, v := range info.Options {
		var err error
		switch k {
		case "address":
			err = parseAddress(v, &cfg)
		case "tag":
			tagTmpl = v
		case "buffer-limit":
			cfg.BufferLimit, err = positive(k, v, 1<<24)
		case "max-retries":
			cfg.MaxRetry, err = positive(k, v, maxMaxRetries)
		case "retry-wait":
			var dur time.Duration
			dur, err = duration(k, v)
			cfg.RetryWait = int(max(dur.Milliseconds(), 1))
		case "max-retry-wait":
			var dur time.Duration
			dur, err = duration(k, v)
			cfg.MaxRetryWait = int(max(dur.Milliseconds(), 1))
		case "write-timeout":
			cfg.WriteTimeout, err = duration(k, v)
			cfg.ReadTimeout = cfg.WriteTimeout
		case "close-timeout":
			d.closeTimeout, err = duration(k, v)
		case "request-ack":
			cfg.RequestAck, err = boolean(k, v)
		case "tls-skip-verify":
			cfg.TlsInsecureSkipVerify, err = boolean(k, v)
		default:
			if !logging.IsCommonOption(k) { // file options are for other drivers
				err = fmt.Errorf("fluentd: unknown option %q: %w", k, errdefs.ErrInvalidArgument)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if cfg.TlsInsecureSkipVerify && cfg.FluentNetwork != "tls" {
		return nil, fmt.Errorf("fluentd: option tls-skip-verify needs a tls:// address: %w", errdefs.ErrInvalidArgument)
	}
	tag, err := expandTag(tagTmpl, &info.Meta)
	if err != nil {
		return nil, err
	}
	d.tag = tag
	d.fixed, d.nfixed = fixedFields(&info.Meta)
	cfg.AsyncResultCallback = func(data []byte, err error) {
		n := logLen(data)
		if err != nil {
			d.dropped.Add(1)
			d.droppedBytes.Add(uint64(n))
		}
		d.inflightBytes.Add(-int64(n))
		d.inflight.Add(-1)
	}
	client, err := fluent.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("fluentd: %w", err)
	}
	d.client = client
	return d, nil
}

func positive(name, v string, limit int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > limit {
		return 0, fmt.Errorf("fluentd: option %s=%q: want an integer in 1..%d: %w", name, v, limit, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

func duration(name, v string) (time.Duration, error) {
	dur, err := time.ParseDuration(v)
	if err != nil || dur <= 0 {
		return 0, fmt.Errorf("fluentd: option %s=%q: want a positive duration such as 500ms: %w", name, v, errdefs.ErrInvalidArgument)
	}
	return dur, nil
}

func boolean(name, v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("fluentd: option %s=%q: want true or false: %w", name, v, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

func parseAddress(v string, cfg *fluent.Config) error {
	bad := func(why string) error {
		return fmt.Errorf("fluentd: option address=%q: %s: %w", v, why, errdefs.ErrInvalidArgument)
	}
	if !strings.Contains(v, "://") {
		v2 := "tcp://" + v
		u, err := url.Parse(v2)
		if err != nil {
			return bad("want host:port")
		}
		return hostPort(u.Host, v, "tcp", cfg)
	}
	u, err := url.Parse(v)
	if err != nil {
		return bad("not a URL")
	}
	switch u.Scheme {
	case "tcp", "tls":
		if u.Path != "" && u.Path != "/" {
			return bad("want " + u.Scheme + "://host:port")
		}
		return hostPort(u.Host, v, u.Scheme, cfg)
	case "unix":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return bad("want unix:///absolute/path")
		}
		cfg.FluentNetwork, cfg.FluentSocketPath = "unix", u.Path
		return nil
	}
	return bad("scheme is not tcp, tls or unix")
}

func hostPort(hp, orig, network string, cfg *fluent.Config) error {
	host, port := hp, "24224"
	if h, p, err := net.SplitHostPort(hp); err == nil {
		host, port = h, p
	}
	n, err := strconv.Atoi(port)
	if host == "" || err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("fluentd: option address=%q: want host:port: %w", orig, errdefs.ErrInvalidArgument)
	}
	cfg.FluentNetwork, cfg.FluentHost, cfg.FluentPort = network, host, n
	return nil
}

func expandTag(tmpl string, m *logging.Metadata) (string, error) {
	short := m.ID
	if len(short) > 12 {
		short = short[:12]
	}
	if tmpl == "" {
		if m.Tag != "" {
			return m.Tag, nil
		}
		tmpl = "{{.ID}}"
	}
	t, err := template.New("tag").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("fluentd: option tag=%q: %v: %w", tmpl, err, errdefs.ErrInvalidArgument)
	}
	var sb strings.Builder
	if err := t.Execute(&sb, TagData{ID: short, FullID: m.ID, Name: m.Name, Namespace: m.Namespace, Tag: m.Tag, Labels: m.Labels}); err != nil {
		return "", fmt.Errorf("fluentd: option tag=%q: %v: %w", tmpl, err, errdefs.ErrInvalidArgument)
	}
	if sb.Len() == 0 {
		return "", fmt.Errorf("fluentd: option tag=%q expands to nothing: %w", tmpl, errdefs.ErrInvalidArgument)
	}
	return sb.String(), nil
}

var ownFields = map[string]bool{"container_id": true, "container_name": true, "source": true, "log": true, "partial_message": true}

func fixedFields(m *logging.Metadata) ([]byte, uint32) {
	var b []byte
	n := uint32(2)
	b = msgp.AppendString(b, "container_id")
	b = msgp.AppendString(b, m.ID)
	b = msgp.AppendString(b, "container_name")
	b = msgp.AppendString(b, m.Name)
	for k, v := range m.Labels {
		if ownFields[k] {
			continue
		}
		b = msgp.AppendString(b, k)
		b = msgp.AppendString(b, v)
		n++
	}
	return b, n
}

// event is one record as a msgpack map; it implements msgp.Marshaler so
// the client encodes it without reflection.
type event struct {
	d *Driver
	r *logging.Record
}

// MarshalMsg appends the event's map.
func (e event) MarshalMsg(b []byte) ([]byte, error) {
	n := e.d.nfixed + 2
	if e.r.Partial {
		n++
	}
	b = msgp.AppendMapHeader(b, n)
	b = append(b, e.d.fixed...)
	b = msgp.AppendString(b, "source")
	b = msgp.AppendString(b, e.r.Stream.String())
	b = msgp.AppendString(b, "log")
	b = msgp.AppendStringFromBytes(b, e.r.Line)
	if e.r.Partial {
		b = msgp.AppendString(b, "partial_message")
		b = msgp.AppendString(b, "true")
	}
	return b, nil
}

// Write queues r. It fails when the buffer is full (ResourceExhausted) or
// after Close.
func (d *Driver) Write(r *logging.Record) error {
	if d.closed.Load() {
		return fmt.Errorf("fluentd: write after close: %w", errdefs.ErrFailedPrecondition)
	}
	ts := r.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	d.inflight.Add(1)
	d.inflightBytes.Add(int64(len(r.Line)))
	// The event is encoded before EncodeAndPostData returns, so r.Line need
	// not outlive the call.
	if err := d.client.EncodeAndPostData(d.tag, ts, event{d: d, r: r}); err != nil {
		d.inflight.Add(-1)
		d.inflightBytes.Add(-int64(len(r.Line)))
		return fmt.Errorf("fluentd: %w", joinExhausted(err))
	}
	return nil
}

func joinExhausted(err error) error {
	if strings.Contains(err.Error(), "Buffer full") {
		return fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return err
}

// Lost returns the events (and their log bytes) that Write accepted and
// that were never delivered.
func (d *Driver) Lost() (lines, bytes uint64) { return d.dropped.Load(), d.droppedBytes.Load() }

// logLen returns the length of the log field of an encoded event
// ([tag, time, record, option]), 0 if it cannot be found.
func logLen(data []byte) int {
	n, b, err := msgp.ReadArrayHeaderBytes(data)
	if err != nil || n < 3 {
		return 0
	}
	if b, err = msgp.Skip(b); err != nil { // tag
		return 0
	}
	if b, err = msgp.Skip(b); err != nil { // time
		return 0
	}
	fields, b, err := msgp.ReadMapHeaderBytes(b)
	if err != nil {
		return 0
	}
	for range fields {
		var k []byte
		if k, b, err = msgp.ReadStringZC(b); err != nil {
			return 0
		}
		if string(k) == "log" {
			v, _, err := msgp.ReadStringZC(b)
			if err != nil {
				return 0
			}
			return len(v)
		}
		if b, err = msgp.Skip(b); err != nil {
			return 0
		}
	}
	return 0
}

// Reopen does nothing: the client reconnects by itself.
func (d *Driver) Reopen() error { return nil }

// Close waits up to close-timeout for queued events to be delivered, then
// stops the client. Events still queued are counted as dropped, and an
// error reports every event lost in the driver's life.
func (d *Driver) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.closed.Swap(true) {
		return nil
	}
	deadline := time.Now().Add(d.closeTimeout)
	for d.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	left := d.inflight.Load()
	if left == 0 {
		// Nothing queued: a graceful stop returns at once, and spares the
		// client's "Discarding queued events" message on stderr.
		d.client.Config.ForceStopAsyncSend = false
	}
	err := d.client.Close()
	// Events discarded by the forced stop never reach the callback.
	if n := d.inflight.Swap(0); n > 0 {
		d.dropped.Add(uint64(n))
		d.droppedBytes.Add(uint64(max(d.inflightBytes.Swap(0), 0)))
	}
	if err != nil {
		return fmt.Errorf("fluentd: close: %w", err)
	}
	if lost := d.dropped.Load(); lost > 0 {
		return fmt.Errorf("fluentd: %d events not delivered (%d still queued at close): %w", lost, left, errdefs.ErrUnavailable)
	}
	return nil
}
