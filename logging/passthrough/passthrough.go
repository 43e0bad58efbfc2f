// Package passthrough holds two trivial drivers. passthrough writes each
// record to the monitor's own stdout or stderr (Podman's -l passthrough,
// when the monitor holds the pipes itself); none discards everything
// (conmon's -l none, off and null).
package passthrough

import (
	"context"
	"io"
	"os"
	"sync"

	"github.com/containers/conmon-v2/logging"
)

// Names of the drivers.
const (
	Name     = "passthrough"
	NoneName = "none"
)

// Driver writes records, newline-terminated unless partial, to Stdout or
// Stderr by stream: the bytes the container wrote, unchanged.
type Driver struct {
	mu     sync.Mutex // one write per record, records never interleaved
	stdout io.Writer
	stderr io.Writer
}

// New returns a Driver writing to stdout and stderr.
func New(stdout, stderr io.Writer) *Driver { return &Driver{stdout: stdout, stderr: stderr} }

// Factory is the registry's constructor: it writes to the process's own
// os.Stdout and os.Stderr. It takes no options.
func Factory(_ context.Context, info logging.Info) (logging.Driver, error) {
	if err := logging.CheckOptions(Name, info.Options); err != nil {
		return nil, err
	}
	return New(os.Stdout, os.Stderr), nil
}

// Write implements logging.Driver.
func (d *Driver) Write(r *logging.Record) error {
	w := d.stdout
	if r.Stream == logging.Stderr {
		w = d.stderr
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := w.Write(r.Line); err != nil {
		return err
	}
	if !r.Partial {
		_, err := w.Write(newline)
		return err
	}
	return nil
}

var newline = []byte{'\n'}

// Reopen implements logging.Driver; there is nothing to reopen.
func (d *Driver) Reopen() error { return nil }

// Close implements logging.Driver. It does not close the writers.
func (d *Driver) Close() error { return nil }

// None discards every record.
type None struct{}

// NoneFactory is the registry's constructor for none.
func NoneFactory(_ context.Context, info logging.Info) (logging.Driver, error) {
	if err := logging.CheckOptions(NoneName, info.Options); err != nil {
		return nil, err
	}
	return None{}, nil
}

// Write implements logging.Driver.
func (None) Write(*logging.Record) error { return nil }

// Reopen implements logging.Driver.
func (None) Reopen() error { return nil }

// Close implements logging.Driver.
func (None) Close() error { return nil }
