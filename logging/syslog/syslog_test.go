package syslog

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/loggingtest"
)

var ts = time.Date(2026, 11, 28, 13, 4, 5, 123456789, time.UTC)

func TestFormat(t *testing.T) {
	host, _ := os.Hostname()
	for _, tc := range []struct {
		name string
		opts map[string]string
		rec  logging.Record
		want string
	}{
		{
			name: "5424 udp stdout",
			opts: map[string]string{"address": "udp://127.0.0.1:514"},
			rec:  logging.Record{Time: ts, Stream: logging.Stdout, Line: []byte("hello")},
			want: "<30>1 2026-11-28T13:04:05.123456Z " + host + " web - stdout - hello",
		},
		{
			name: "5424 tcp stderr local0, octet counted",
			opts: map[string]string{"address": "tcp://127.0.0.1:514", "facility": "local0"},
			rec:  logging.Record{Time: ts, Stream: logging.Stderr, Line: []byte("oops")},
			want: "<131>1 2026-11-28T13:04:05.123456Z " + host + " web - stderr - oops",
		},
		{
			name: "3164 tcp newline framed",
			opts: map[string]string{"address": "tcp://127.0.0.1:514", "format": "rfc3164", "tag": "my app"},
			rec:  logging.Record{Time: ts, Stream: logging.Stdout, Line: []byte("x")},
			want: "<30>Nov 28 13:04:05 " + host + " my_app: x\n",
		},
		{
			name: "3164 default on unix socket, no host",
			opts: map[string]string{"address": "unixgram:///dev/log", "facility": "1"},
			rec:  logging.Record{Time: ts, Stream: logging.Stdout, Line: []byte("<5>notice")},
			want: "<13>Nov 28 13:04:05 web: notice",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := newDriver(logging.Info{Meta: logging.Metadata{ID: "abc", Name: "web"}, Options: tc.opts})
			if err != nil {
				t.Fatal(err)
			}
			got := string(d.format1(nil, &tc.rec))
			want := tc.want
			if d.stream && d.format == RFC5424 {
				want = strconv.Itoa(len(want)) + " " + want
			}
			if got != want {
				t.Errorf("got  %q\nwant %q", got, want)
			}
		})
	}
}

func TestBadOptions(t *testing.T) {
	for _, tc := range []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"colour": "x"}, `"colour"`},
		{map[string]string{"address": "ftp://h:1"}, `"ftp"`},
		{map[string]string{"address": "tcp://h"}, `tcp://h`},
		{map[string]string{"address": "udp://h:99999"}, `99999`},
		{map[string]string{"address": "unix://relative"}, `unix://relative`},
		{map[string]string{"format": "rfc9999"}, `rfc9999`},
		{map[string]string{"facility": "kitchen"}, `kitchen`},
		{map[string]string{"facility": "24"}, `facility`},
		{map[string]string{"tls-ca": "/x"}, `tcp+tls`},
		{map[string]string{"address": "tcp+tls://h:1", "tls-ca": "/nonexistent/ca.pem"}, `tls-ca`},
		{map[string]string{"address": "tcp+tls://h:1", "tls-cert": "/x"}, `tls-key`},
	} {
		_, err := newDriver(logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: tc.opts})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%v: err = %v, want InvalidArgument naming %s", tc.opts, err, tc.want)
		}
	}
	_, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: map[string]string{"address": "unixgram://" + filepath.Join(t.TempDir(), "none")}})
	if err == nil || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("missing socket: err = %v, want Unavailable", err)
	}
}

// receiver collects messages from one listener, decoding the framing.
type receiver struct {
	msgs chan string
	addr string
}

func (r *receiver) next(t *testing.T) string {
	t.Helper()
	select {
	case m := <-r.msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message")
		return ""
	}
}

func serveStream(t *testing.T, l net.Listener, octet bool, msgs chan string) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// One connection at a time, each read to its end: after a
			// Reopen the driver closes the old connection before it dials
			// the next, so a serial receiver sees records in the order
			// they were written. (Across concurrent connections the
			// order is the receiver's choice, not the driver's.)
			func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if octet {
						n, err := br.ReadString(' ')
						if err != nil {
							return
						}
						size, err := strconv.Atoi(strings.TrimSpace(n))
						if err != nil {
							msgs <- "BAD FRAME " + n
							return
						}
						b := make([]byte, size)
						if _, err := io.ReadFull(br, b); err != nil {
							return
						}
						msgs <- string(b)
					} else {
						s, err := br.ReadString('\n')
						if err != nil {
							return
						}
						msgs <- s
					}
				}
			}()
		}
	}()
}

func servePacket(t *testing.T, pc net.PacketConn, msgs chan string) {
	t.Cleanup(func() { pc.Close() })
	go func() {
		b := make([]byte, 70000)
		for {
			n, _, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			msgs <- string(b[:n])
		}
	}()
}

func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

func TestTransports(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := selfSigned(t, dir)
	msgRe := regexp.MustCompile(`^<30>1 \S+ \S+ web - stdout - (.*)$`)
	msg3164 := regexp.MustCompile(`^<30>\w{3} [ \d]\d \d\d:\d\d:\d\d web: (.*)\n?$`)
	for _, tc := range []struct {
		name   string
		listen func(t *testing.T, msgs chan string) (address string)
		opts   map[string]string
		re     *regexp.Regexp
	}{
		{"udp", func(t *testing.T, msgs chan string) string {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			servePacket(t, pc, msgs)
			return "udp://" + pc.LocalAddr().String()
		}, nil, msgRe},
		{"tcp", func(t *testing.T, msgs chan string) string {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			serveStream(t, l, true, msgs)
			return "tcp://" + l.Addr().String()
		}, nil, msgRe},
		{"tcp+tls", func(t *testing.T, msgs chan string) string {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				t.Fatal(err)
			}
			l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
			if err != nil {
				t.Fatal(err)
			}
			serveStream(t, l, true, msgs)
			return "tcp+tls://" + l.Addr().String()
		}, map[string]string{"tls-ca": certFile}, msgRe},
		{"unixgram", func(t *testing.T, msgs chan string) string {
			p := filepath.Join(t.TempDir(), "log")
			pc, err := net.ListenPacket("unixgram", p)
			if err != nil {
				t.Fatal(err)
			}
			servePacket(t, pc, msgs)
			return "unixgram://" + p
		}, nil, msg3164},
		{"unix stream", func(t *testing.T, msgs chan string) string {
			p := filepath.Join(t.TempDir(), "log")
			l, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			serveStream(t, l, false, msgs)
			return "unix://" + p
		}, nil, msg3164},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msgs := make(chan string, 100)
			opts := map[string]string{"address": tc.listen(t, msgs)}
			for k, v := range tc.opts {
				opts[k] = v
			}
			d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc", Name: "web"}, Options: opts})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			r := &receiver{msgs: msgs}
			for i := 0; i < 3; i++ {
				if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("line %d with spaces", i))}); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 3; i++ {
				m := r.next(t)
				sm := tc.re.FindStringSubmatch(m)
				if sm == nil || sm[1] != fmt.Sprintf("line %d with spaces", i) {
					t.Errorf("message %d: %q", i, m)
				}
			}
		})
	}
}

func TestTLSRejectsUnknownCA(t *testing.T) {
	certFile, keyFile := selfSigned(t, t.TempDir())
	cert, _ := tls.LoadX509KeyPair(certFile, keyFile)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	serveStream(t, l, true, make(chan string, 10))
	_, err = New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: map[string]string{"address": "tcp+tls://" + l.Addr().String()}})
	if err == nil {
		t.Fatal("self-signed server accepted without tls-ca")
	}
}

// TestReconnect restarts the TCP receiver between two writes: the driver
// notices the closed connection before writing and re-dials, losing nothing.
func TestReconnect(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	first := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		b := make([]byte, 1000)
		n, _ := c.Read(b)
		first <- string(b[:n])
		c.Close() // the receiver goes away
		l.Close()
	}()
	d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc", Name: "web"}, Options: map[string]string{"address": "tcp://" + addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	write := func(s string) error {
		return d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(s)})
	}
	if err := write("before"); err != nil {
		t.Fatal(err)
	}
	if m := <-first; !strings.HasSuffix(m, "before") {
		t.Fatalf("got %q", m)
	}
	var l2 net.Listener
	for i := 0; ; i++ {
		l2, err = net.Listen("tcp", addr)
		if err == nil {
			break
		}
		if i == 50 {
			t.Skipf("cannot rebind %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	msgs2 := make(chan string, 100)
	serveStream(t, l2, true, msgs2)
	for _, s := range []string{"after1", "after2"} {
		if err := write(s); err != nil {
			t.Fatal(err)
		}
		if m := (&receiver{msgs: msgs2}).next(t); !strings.HasSuffix(m, s) {
			t.Fatalf("got %q, want %s", m, s)
		}
	}
}

// TestBackoff: with the receiver gone, writes fail fast between dials.
func TestBackoff(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveStream(t, l, true, make(chan string, 100))
	d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: map[string]string{"address": "tcp://" + l.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	l.Close()
	d.Reopen()
	// The backoff doubles from 100ms: among a burst of writes, some must
	// fail without dialling.
	backedOff := false
	for i := 0; i < 20 && !backedOff; i++ {
		err := d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("x")})
		if err == nil {
			t.Fatal("write to a closed receiver succeeded")
		}
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("err = %v, want Unavailable", err)
		}
		backedOff = strings.Contains(err.Error(), "next attempt")
	}
	if !backedOff {
		t.Error("no write was refused by the backoff")
	}
}

// TestConformance runs the suite over TCP with RFC 5424 (octet counting
// carries any byte), reading back stream from MSGID.
func TestConformance(t *testing.T) {
	loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		msgs := make(chan string, 10000)
		serveStream(t, l, true, msgs)
		d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc", Name: "web"}, Options: map[string]string{"address": "tcp://" + l.Addr().String()}})
		if err != nil {
			t.Fatal(err)
		}
		var got []logging.Record
		return d, func() []logging.Record {
			for {
				select {
				case m := <-msgs:
					// <PRI>1 TS HOST APP PROCID MSGID SD MSG
					f := strings.SplitN(m, " ", 8)
					if len(f) != 8 {
						t.Fatalf("bad message %q", m)
					}
					s := logging.Stdout
					if f[5] == "stderr" {
						s = logging.Stderr
					}
					got = append(got, logging.Record{Stream: s, Line: []byte(f[7])})
				default:
					return got
				}
			}
		}
	})
}

// TestCommonOptionsIgnored: the file options every driver receives from a
// logging.Config are not syslog's business.
func TestCommonOptionsIgnored(t *testing.T) {
	if _, err := newDriver(logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: map[string]string{logging.OptPath: "/var/log/ctr.log", logging.OptMaxFiles: "3"}}); err != nil {
		t.Fatal(err)
	}
}

// TestWriteAllocs: formatting and sending a line allocates nothing.
func TestWriteAllocs(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	servePacket(t, pc, make(chan string, 1000))
	d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: map[string]string{"address": "udp://" + pc.LocalAddr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rec := &logging.Record{Time: time.Now(), Stream: logging.Stderr, Line: []byte("a line of container output")}
	d.Write(rec)
	if allocs := testing.AllocsPerRun(20, func() { d.Write(rec) }); allocs > 0 {
		t.Errorf("Write allocates %.1f times per line", allocs)
	}
}

// TestReassembly: partial records become one message; a line over
// max-line-size is sent in pieces of that size.
func TestReassembly(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan string, 100)
	servePacket(t, pc, msgs)
	d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: map[string]string{"address": "udp://" + pc.LocalAddr().String(), "max-line-size": "8"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []logging.Record{
		{Stream: logging.Stdout, Line: []byte("abc"), Partial: true},
		{Stream: logging.Stderr, Line: []byte("err"), Partial: false},
		{Stream: logging.Stdout, Line: []byte("def"), Partial: false},
		{Stream: logging.Stdout, Line: []byte("12345"), Partial: true},
		{Stream: logging.Stdout, Line: []byte("67890"), Partial: true},
		{Stream: logging.Stdout, Line: []byte("end"), Partial: false},
		{Stream: logging.Stdout, Line: []byte("tail"), Partial: true},
	} {
		if err := d.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	d.Close()
	r := &receiver{msgs: msgs}
	for _, want := range []string{"err", "abcdef", "1234567890", "end", "tail"} {
		m := r.next(t)
		if !strings.HasSuffix(m, " "+want) {
			t.Errorf("got %q, want it to end with %q", m, want)
		}
	}
}

// BenchmarkWrite: 80-byte lines over TCP, RFC 5424, to a reader that
// discards them.
func BenchmarkWrite(b *testing.B) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
		}
	}()
	d, err := New(context.Background(), logging.Info{Meta: logging.Metadata{ID: "abc"}, Options: map[string]string{"address": "tcp://" + l.Addr().String()}})
	if err != nil {
		b.Fatal(err)
	}
	rec := &logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(strings.Repeat("x", 79))}
	b.SetBytes(80)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Write(rec); err != nil {
			b.Fatal(err)
		}
	}
	d.Close()
}
