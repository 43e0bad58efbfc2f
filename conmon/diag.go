package conmon

import (
	"fmt"
	"io"
	"log/syslog"
	"strings"
	"sync"
)

// Level is the verbosity of conmon's own diagnostics (--log-level).
type Level int

// Levels in conmon's order; a message is printed when its level is at most
// the configured one.
const (
	LevelError Level = iota
	LevelWarn
	LevelInfo
	LevelDebug
	LevelTrace
)

// ParseLevel reads a --log-level value (case-insensitive).
func ParseLevel(s string) (Level, bool) {
	switch strings.ToLower(s) {
	case "error", "fatal", "panic":
		return LevelError, true
	case "warn", "warning":
		return LevelWarn, true
	case "info":
		return LevelInfo, true
	case "debug":
		return LevelDebug, true
	case "trace":
		return LevelTrace, true
	}
	return 0, false
}

// Diag writes conmon's own diagnostics: "[conmon:e]: msg" lines on stderr
// (which is /dev/null once the monitor daemonized) and, with --syslog, the
// same messages to syslog, the only place they remain visible then.
type Diag struct {
	mu     sync.Mutex
	level  Level
	out    io.Writer
	syslog *syslog.Writer
	prefix string // "conmon <cid[:20]> "
}

// NewDiag returns a Diag writing to out (may be nil) and, if useSyslog,
// to the local syslog.
func NewDiag(level Level, out io.Writer, useSyslog bool, cid string) *Diag {
	d := &Diag{level: level, out: out}
	if len(cid) > 20 {
		cid = cid[:20]
	}
	d.prefix = "conmon " + cid + " "
	if useSyslog {
		if w, err := syslog.New(syslog.LOG_USER|syslog.LOG_INFO, "conmon"); err == nil {
			d.syslog = w
		}
	}
	return d
}

// SetOutput replaces the stderr writer (nil: none).
func (d *Diag) SetOutput(w io.Writer) {
	d.mu.Lock()
	d.out = w
	d.mu.Unlock()
}

var levelTags = [...]struct{ short, word string }{
	LevelError: {"e", "error"},
	LevelWarn:  {"w", "warn"},
	LevelInfo:  {"i", "info"},
	LevelDebug: {"d", "debug"},
	LevelTrace: {"d", "trace"},
}

func (d *Diag) logf(l Level, format string, a ...any) {
	if d == nil || l > d.level {
		return
	}
	msg := fmt.Sprintf(format, a...)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.out != nil {
		fmt.Fprintf(d.out, "[conmon:%s]: %s\n", levelTags[l].short, msg)
	}
	if d.syslog != nil {
		line := d.prefix + levelTags[l].word + ": " + msg
		switch l {
		case LevelError:
			_ = d.syslog.Err(line)
		case LevelWarn:
			_ = d.syslog.Warning(line)
		case LevelInfo:
			_ = d.syslog.Info(line)
		default:
			_ = d.syslog.Debug(line)
		}
	}
}

// Errorf, Warnf, Infof, Debugf and Tracef log at their level.
func (d *Diag) Errorf(f string, a ...any) { d.logf(LevelError, f, a...) }
func (d *Diag) Warnf(f string, a ...any)  { d.logf(LevelWarn, f, a...) }
func (d *Diag) Infof(f string, a ...any)  { d.logf(LevelInfo, f, a...) }
func (d *Diag) Debugf(f string, a ...any) { d.logf(LevelDebug, f, a...) }
func (d *Diag) Tracef(f string, a ...any) { d.logf(LevelTrace, f, a...) }
