package process

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging/binary"
)

// maxIDLength is containerd's limit for identifiers.
const maxIDLength = 76

// idPattern is containerd's identifier grammar: alphanumeric runs joined by
// single '.', '_' or '-'.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`)

// ValidateID checks a container or exec ID against containerd's identifier
// rules. what names the field in the error ("container id", "exec id").
func ValidateID(what, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s must not be empty: %w", what, errdefs.ErrInvalidArgument)
	case len(id) > maxIDLength:
		return fmt.Errorf("%s %q is %d characters, longer than %d: %w", what, id, len(id), maxIDLength, errdefs.ErrInvalidArgument)
	case !idPattern.MatchString(id):
		return fmt.Errorf("%s %q must match %s: %w", what, id, idPattern, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ValidateBundle checks that bundle is an absolute, clean path of a
// directory holding config.json.
func ValidateBundle(bundle string) error {
	if bundle == "" {
		return fmt.Errorf("bundle path must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return fmt.Errorf("bundle path %q must be absolute and clean: %w", bundle, errdefs.ErrInvalidArgument)
	}
	st, err := os.Stat(bundle)
	if err != nil {
		return fmt.Errorf("bundle %q: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	if !st.IsDir() {
		return fmt.Errorf("bundle %q is not a directory: %w", bundle, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil {
		return fmt.Errorf("bundle %q has no config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Scheme is how a process's output is delivered.
type Scheme string

// The stdio schemes containerd's clients use.
const (
	SchemeNull   Scheme = ""       // no stdout/stderr
	SchemeFifo   Scheme = "fifo"   // plain paths of FIFOs the client created
	SchemeFile   Scheme = "file"   // file:///abs/path: both streams appended to one file
	SchemeBinary Scheme = "binary" // binary:///abs/logger?k=v: a logger process gets fds 3/4/5
)

// Stdio is a process's stdio as the client asked for it.
type Stdio struct {
	Stdin    string `json:"stdin,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
	Terminal bool   `json:"terminal,omitempty"`
}

// IsNull reports whether the process has no stdio at all.
func (s Stdio) IsNull() bool {
	return s.Stdin == "" && s.Stdout == "" && s.Stderr == ""
}

// ParsedStdio is a validated Stdio.
type ParsedStdio struct {
	Stdio
	Scheme Scheme
	// URI is the parsed stdout URI for the file and binary schemes.
	URI *url.URL
}

// ParseStdio validates s. The scheme is taken from stdout, as containerd
// does: a plain absolute path is a FIFO, file:// and binary:// are URIs
// whose stderr is either empty or the same URI. binary:// loggers must live
// under one of loggerDirs. Every refusal is an InvalidArgument naming the
// input.
func ParseStdio(s Stdio, loggerDirs []string) (*ParsedStdio, error) {
	p := &ParsedStdio{Stdio: s}
	if s.Stdin != "" {
		if err := checkFifoPath("stdin", s.Stdin); err != nil {
			return nil, err
		}
	}
	if s.Stdout == "" {
		if s.Stderr != "" {
			if err := checkFifoPath("stderr", s.Stderr); err != nil {
				return nil, err
			}
			p.Scheme = SchemeFifo
		}
		return p, nil
	}
	if !strings.Contains(s.Stdout, "://") {
		if err := checkFifoPath("stdout", s.Stdout); err != nil {
			return nil, err
		}
		if s.Stderr != "" {
			if err := checkFifoPath("stderr", s.Stderr); err != nil {
				return nil, err
			}
		}
		p.Scheme = SchemeFifo
		return p, nil
	}
	u, err := url.Parse(s.Stdout)
	if err != nil {
		return nil, fmt.Errorf("stdout URI %q: %v: %w", s.Stdout, err, errdefs.ErrInvalidArgument)
	}
	if s.Stderr != "" && s.Stderr != s.Stdout {
		return nil, fmt.Errorf("stderr %q must be empty or equal to the stdout URI %q: %w", s.Stderr, s.Stdout, errdefs.ErrInvalidArgument)
	}
	if u.Host != "" {
		return nil, fmt.Errorf("stdout URI %q must have an empty host and an absolute path (three slashes): %w", s.Stdout, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(u.Path) || filepath.Clean(u.Path) != u.Path {
		return nil, fmt.Errorf("stdout URI %q: path %q must be absolute and clean: %w", s.Stdout, u.Path, errdefs.ErrInvalidArgument)
	}
	switch Scheme(u.Scheme) {
	case SchemeFile:
		if len(u.Query()) > 0 {
			return nil, fmt.Errorf("stdout URI %q: file:// takes no query: %w", s.Stdout, errdefs.ErrInvalidArgument)
		}
	case SchemeBinary:
		if err := checkLogger(u.Path, loggerDirs); err != nil {
			return nil, fmt.Errorf("stdout URI %q: %w", s.Stdout, err)
		}
	default:
		return nil, fmt.Errorf("stdout URI %q: unknown scheme %q (want a FIFO path, file:// or binary://): %w", s.Stdout, u.Scheme, errdefs.ErrInvalidArgument)
	}
	p.Scheme = Scheme(u.Scheme)
	p.URI = u
	return p, nil
}

func checkFifoPath(what, p string) error {
	if strings.Contains(p, "://") {
		return fmt.Errorf("%s %q: only stdout may carry a URI: %w", what, p, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%s path %q must be absolute and clean: %w", what, p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// checkLogger refuses a binary:// logger outside the allow-listed
// directories. Both sides are resolved through symlinks so a link inside an
// allowed directory cannot point the shim at an arbitrary program
// (GHSA-xhf5-7wjv-pqxp).
func checkLogger(path string, dirs []string) error {
	if len(dirs) == 0 {
		return fmt.Errorf("binary logger %q refused: no logger directories are allowed: %w", path, errdefs.ErrInvalidArgument)
	}
	real, inside, err := binary.ResolveInDirs(path, dirs)
	if err != nil {
		return fmt.Errorf("binary logger %q: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	st, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("binary logger %q: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("binary logger %q is not an executable file: %w", path, errdefs.ErrInvalidArgument)
	}
	if !inside {
		return fmt.Errorf("binary logger %q is not under an allowed logger directory %v: %w", path, dirs, errdefs.ErrInvalidArgument)
	}
	return nil
}
