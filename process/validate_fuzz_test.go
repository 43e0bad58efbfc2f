package process

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// FuzzValidateID: an accepted ID is short and safe as one path element;
// every refusal is an InvalidArgument.
func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"", "a", "web-1", "a.b_c-d", "..", "a/b", "a..b", strings.Repeat("x", 77), "\x00", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateID("container id", id)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ValidateID(%q): %v is not InvalidArgument", id, err)
			}
			return
		}
		if len(id) == 0 || len(id) > maxIDLength || strings.ContainsAny(id, "/\x00") ||
			id == "." || id == ".." || filepath.Base(id) != id {
			t.Fatalf("ValidateID accepted %q", id)
		}
	})
}

// FuzzParseStdio: every accepted stdio names absolute, clean paths only
// (no "..", no relative path reaches the FIFO opener or a logger), and
// every refusal is an InvalidArgument.
func FuzzParseStdio(f *testing.F) {
	for _, s := range [][3]string{
		{"", "", ""},
		{"/run/in", "/run/out", "/run/err"},
		{"", "file:///var/log/c.log", ""},
		{"", "file:///var/log/c.log", "file:///var/log/c.log"},
		{"", "binary:///usr/bin/logger?a=b", ""},
		{"", "file://host/x", ""},
		{"", "file:///a/../b", ""},
		{"rel", "/out", ""},
		{"", "fifo:///x", ""},
		{"", "%zz://", ""},
	} {
		f.Add(s[0], s[1], s[2], false)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in, out, errp string, term bool) {
		p, err := ParseStdio(Stdio{Stdin: in, Stdout: out, Stderr: errp, Terminal: term}, []string{dir})
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseStdio: %v is not InvalidArgument", err)
			}
			return
		}
		clean := func(what, s string) {
			if s != "" && (!filepath.IsAbs(s) || filepath.Clean(s) != s) {
				t.Fatalf("ParseStdio accepted %s %q", what, s)
			}
		}
		clean("stdin", in)
		switch p.Scheme {
		case SchemeFifo:
			clean("stdout", out)
			clean("stderr", errp)
		case SchemeFile, SchemeBinary:
			if p.URI == nil {
				t.Fatalf("scheme %s without a URI", p.Scheme)
			}
			clean("stdout URI path", p.URI.Path)
			if p.Scheme == SchemeBinary && !strings.HasPrefix(p.URI.Path, dir+"/") {
				t.Fatalf("binary logger %q outside the allowed directory", p.URI.Path)
			}
		case SchemeNull:
			if out != "" || errp != "" {
				t.Fatalf("null scheme for stdout %q stderr %q", out, errp)
			}
		default:
			t.Fatalf("unknown scheme %q", p.Scheme)
		}
	})
}
