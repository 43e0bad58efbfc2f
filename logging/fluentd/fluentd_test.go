package fluentd

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/fluent/fluent-logger-golang/fluent"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/fluentd/fluentdtest"
	"github.com/containers/conmon-v2/logging/loggingtest"
)

var meta = logging.Metadata{ID: "0123456789abcdef0123", Name: "web", Namespace: "k8s.io", Tag: "t1", Labels: map[string]string{"team": "core", "log": "ignored"}}

func TestTag(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{"", "t1"},
		{"{{.ID}}", "0123456789ab"},
		{"docker.{{.Name}}.{{.FullID}}", "docker.web.0123456789abcdef0123"},
		{"{{.Namespace}}/{{index .Labels \"team\"}}", "k8s.io/core"},
	} {
		got, err := expandTag(tc.tmpl, &meta)
		if err != nil || got != tc.want {
			t.Errorf("expandTag(%q) = %q, %v; want %q", tc.tmpl, got, err, tc.want)
		}
	}
	m := meta
	m.Tag = ""
	if got, _ := expandTag("", &m); got != "0123456789ab" {
		t.Errorf("default tag without Tag = %q", got)
	}
}

func TestBadOptions(t *testing.T) {
	for _, tc := range []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"colour": "x"}, `"colour"`},
		{map[string]string{"address": "ftp://x:1"}, `ftp://x:1`},
		{map[string]string{"address": "host:notaport"}, `host:notaport`},
		{map[string]string{"address": "unix://rel"}, `unix://rel`},
		{map[string]string{"tag": "{{.Nope}}"}, `tag=`},
		{map[string]string{"tag": "{{"}, `tag=`},
		{map[string]string{"buffer-limit": "0"}, `buffer-limit`},
		{map[string]string{"max-retries": "500"}, `max-retries`},
		{map[string]string{"retry-wait": "soon"}, `retry-wait`},
		{map[string]string{"request-ack": "perhaps"}, `request-ack`},
		{map[string]string{"tls-skip-verify": "true"}, `tls://`},
	} {
		_, err := New(context.Background(), logging.Info{Meta: meta, Options: tc.opts})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%v: err = %v, want InvalidArgument naming %s", tc.opts, err, tc.want)
		}
	}
}

func TestEventEncoding(t *testing.T) {
	d := &Driver{}
	d.fixed, d.nfixed = fixedFields(&meta)
	for _, tc := range []struct {
		rec  logging.Record
		want map[string]string
	}{
		{logging.Record{Stream: logging.Stdout, Line: []byte("hello")}, map[string]string{
			"container_id": meta.ID, "container_name": "web", "source": "stdout", "log": "hello", "team": "core"}},
		{logging.Record{Stream: logging.Stderr, Line: []byte("part"), Partial: true}, map[string]string{
			"container_id": meta.ID, "container_name": "web", "source": "stderr", "log": "part", "team": "core", "partial_message": "true"}},
	} {
		b, err := event{d: d, r: &tc.rec}.MarshalMsg(nil)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]string
		if err := msgpack.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(tc.want) {
			t.Errorf("got %v, want %v", got, tc.want)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%s = %q, want %q", k, got[k], v)
			}
		}
	}
}

// TestCloseCountsUndelivered: with no receiver, queued events are reported
// lost by Close instead of vanishing.
func TestCloseCountsUndelivered(t *testing.T) {
	d, err := New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{
		"address": "127.0.0.1:1", "close-timeout": "100ms", "retry-wait": "10ms"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	err = d.Close()
	if err == nil || !strings.Contains(err.Error(), "5 events not delivered") {
		t.Fatalf("Close = %v, want 5 events reported lost", err)
	}
	if lines, bytes := d.(*Driver).Lost(); lines != 5 || bytes != 5 {
		t.Errorf("Lost() = %d lines, %d bytes; want 5, 5", lines, bytes)
	}
	if err := d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("x")}); err == nil {
		t.Error("write after close succeeded")
	}
}

func TestLogLen(t *testing.T) {
	d := &Driver{}
	d.fixed, d.nfixed = fixedFields(&meta)
	rec := logging.Record{Stream: logging.Stdout, Line: []byte("twelve bytes")}
	ev, _ := event{d: d, r: &rec}.MarshalMsg(nil)
	m := fluent.MessageExt{Tag: "t", Time: fluent.EventTime(time.Now()), Record: event{d: d, r: &rec}}
	b, err := m.MarshalMsg(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := logLen(b); n != 12 {
		t.Errorf("logLen = %d, want 12 (event %d bytes)", n, len(ev))
	}
	if n := logLen([]byte{0x01}); n != 0 {
		t.Errorf("logLen(garbage) = %d", n)
	}
}

func TestConformance(t *testing.T) {
	loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		rcv := fluentdtest.Start(t, "127.0.0.1:0")
		d, err := New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"address": rcv.Addr()}})
		if err != nil {
			t.Fatal(err)
		}
		var got []logging.Record
		return d, func() []logging.Record {
			for {
				select {
				case e := <-rcv.Events:
					s := logging.Stdout
					if e.Record["source"] == "stderr" {
						s = logging.Stderr
					}
					got = append(got, logging.Record{Stream: s, Line: []byte(e.Record["log"]), Partial: e.Record["partial_message"] == "true"})
				default:
					return got
				}
			}
		}
	})
}

// TestCommonOptionsIgnored: the file options every driver receives from a
// logging.Config are not fluentd's business.
func TestCommonOptionsIgnored(t *testing.T) {
	d, err := New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{logging.OptPath: "/var/log/ctr.log", logging.OptCompress: "true", "close-timeout": "10ms"}})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
}

// TestUnixSocket: the forward protocol over a unix socket, with acks.
func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "fluent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rcv := fluentdtest.Serve(t, l)
	d, err := New(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"address": "unix://" + sock, "request-ack": "true"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Write(&logging.Record{Stream: logging.Stderr, Line: []byte("over unix")}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	e := rcv.Collect(t, 1)[0]
	if e.Record["log"] != "over unix" || e.Record["source"] != "stderr" || e.Tag != "t1" {
		t.Errorf("event %+v", e)
	}
}
