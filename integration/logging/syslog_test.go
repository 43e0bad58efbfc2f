package logging_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/syslog"
)

// rsyslogd is a private rsyslog: its own config, sockets and ports, all
// messages written to out by a template that shows the parsed fields.
type rsyslogd struct {
	dir      string
	out      string
	conf     string
	cmd      *exec.Cmd
	udp, tcp int // loopback ports
	tls      int
	unixgram string // imuxsock socket
	unixStr  string // imptcp unix stream socket
	caFile   string
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func freeUDPPort(t *testing.T) int {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// syslogCert writes a self-signed certificate for 127.0.0.1.
func syslogCert(t *testing.T, dir string) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func startRsyslog(t *testing.T) *rsyslogd {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "rsyslogd")
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so"); err != nil {
		t.Logf("rsyslog-openssl may be missing (.ci/run installs it): %v", err)
	}
	dir := t.TempDir()
	r := &rsyslogd{
		dir: dir, out: filepath.Join(dir, "out.log"), conf: filepath.Join(dir, "rsyslog.conf"),
		udp: freeUDPPort(t), tcp: freePort(t), tls: freePort(t),
		unixgram: filepath.Join(dir, "log.dgram"), unixStr: filepath.Join(dir, "log.stream"),
	}
	certFile, keyFile := syslogCert(t, dir)
	r.caFile = certFile
	conf := fmt.Sprintf(`global(workDirectory=%[1]q maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket=%[2]q CreatePath="on")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="%[3]d")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="%[4]d")
input(type="imtcp" address="127.0.0.1" port="%[5]d" name="tls"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"
      streamDriver.CAFile=%[6]q streamDriver.CertFile=%[6]q streamDriver.KeyFile=%[7]q)
module(load="imptcp")
input(type="imptcp" path=%[8]q unlink="on")
template(name="fields" type="string" string="%%programname%%|%%syslogseverity%%|%%syslogfacility-text%%|%%msgid%%|%%msg%%\n")
*.* action(type="omfile" file=%[9]q template="fields")
`, dir, r.unixgram, r.udp, r.tcp, r.tls, certFile, keyFile, r.unixStr, r.out)
	if err := os.WriteFile(r.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("rsyslogd", "-N1", "-f", r.conf).CombinedOutput()
	if err != nil {
		t.Fatalf("rsyslogd -N1: %v\n%s", err, out)
	}
	r.start(t)
	t.Cleanup(r.stop)
	return r
}

func (r *rsyslogd) start(t *testing.T) {
	t.Helper()
	r.cmd = exec.Command("rsyslogd", "-n", "-f", r.conf, "-i", filepath.Join(r.dir, "pid"))
	r.cmd.Stdout, r.cmd.Stderr = os.Stderr, os.Stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ready := true
		for _, p := range []int{r.tcp} { // imtcp opens its inputs together; probing TLS with plain TCP only makes noise
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ready = false
				break
			}
			c.Close()
		}
		for _, p := range []string{r.unixgram, r.unixStr} {
			if _, err := os.Stat(p); err != nil {
				ready = false
			}
		}
		if ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("rsyslogd did not open its inputs within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *rsyslogd) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(unix.SIGTERM)
	_ = r.cmd.Wait()
	r.cmd = nil
}

// lines waits until out holds n lines containing marker.
func (r *rsyslogd) lines(t *testing.T, marker string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(r.out)
		var got []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, marker) {
				got = append(got, l)
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("rsyslog wrote %d lines with %s, want %d:\n%s", len(got), marker, n, b)
			}
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSyslogTransports(t *testing.T) {
	rs := startRsyslog(t)
	for _, tc := range []struct {
		name    string
		address string
		format  string
		extra   map[string]string
	}{
		{"unixgram rfc3164", "unixgram://" + rs.unixgram, "", nil},
		{"unix stream rfc3164", "unix://" + rs.unixStr, "", nil},
		{"unix stream rfc5424", "unix://" + rs.unixStr, "rfc5424", nil},
		{"udp rfc5424", fmt.Sprintf("udp://127.0.0.1:%d", rs.udp), "", nil},
		{"udp rfc3164", fmt.Sprintf("udp://127.0.0.1:%d", rs.udp), "rfc3164", nil},
		{"tcp rfc5424", fmt.Sprintf("tcp://127.0.0.1:%d", rs.tcp), "", nil},
		{"tcp rfc3164", fmt.Sprintf("tcp://127.0.0.1:%d", rs.tcp), "rfc3164", nil},
		{"tcp+tls rfc5424", fmt.Sprintf("tcp+tls://127.0.0.1:%d", rs.tls), "", map[string]string{"tls-ca": rs.caFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := fmt.Sprintf("m%d", time.Now().UnixNano())
			opts := map[string]string{"address": tc.address, "facility": "local3", "tag": "ctr-" + marker}
			if tc.format != "" {
				opts["format"] = tc.format
			}
			for k, v := range tc.extra {
				opts[k] = v
			}
			meta := logging.Metadata{ID: "0123456789abcdef", Name: "web"}
			d, err := syslog.New(context.Background(), logging.Info{Meta: meta, Options: opts})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range []logging.Record{
				{Stream: logging.Stdout, Line: []byte("out " + marker)},
				{Stream: logging.Stderr, Line: []byte("err " + marker)},
				{Stream: logging.Stdout, Line: []byte("<4>warn " + marker)},
			} {
				r.Time, r.Meta = time.Now(), &meta
				if err := d.Write(&r); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			got := rs.lines(t, marker, 3)
			msgid := func(s string) string {
				if tc.format == "rfc3164" || (tc.format == "" && strings.HasPrefix(tc.address, "unix")) {
					return "-"
				}
				return s
			}
			want := []string{
				fmt.Sprintf("ctr-%s|6|local3|%s|out %s", marker, msgid("stdout"), marker),
				fmt.Sprintf("ctr-%s|3|local3|%s|err %s", marker, msgid("stderr"), marker),
				fmt.Sprintf("ctr-%s|4|local3|%s|warn %s", marker, msgid("stdout"), marker),
			}
			for i := range want {
				// rsyslog keeps RFC 3164's space after "TAG:" in msg.
				if g := strings.Replace(got[i], "| ", "|", 1); g != want[i] {
					t.Errorf("line %d:\n got  %q\n want %q", i, got[i], want[i])
				}
			}
		})
	}
}

// TestSyslogReconnect restarts rsyslog between writes over TCP: no line is
// lost.
func TestSyslogReconnect(t *testing.T) {
	rs := startRsyslog(t)
	marker := fmt.Sprintf("r%d", time.Now().UnixNano())
	meta := logging.Metadata{ID: "0123456789abcdef", Name: "web"}
	d, err := syslog.New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{
		"address": fmt.Sprintf("tcp://127.0.0.1:%d", rs.tcp), "tag": "rc"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	write := func(i int) {
		t.Helper()
		if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("%s line %d", marker, i)), Meta: &meta}); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	rs.lines(t, marker, 1)
	rs.stop()
	rs.start(t)
	for i := 1; i <= 3; i++ {
		write(i)
	}
	got := rs.lines(t, marker, 4)
	for i, l := range got {
		if !strings.HasSuffix(l, fmt.Sprintf("line %d", i)) {
			t.Errorf("line %d: %q", i, l)
		}
	}
}
