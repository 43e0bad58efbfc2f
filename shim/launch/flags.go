// Package launch is the light half of the containerd shim v2: its command
// line, its configuration file, how containers are grouped onto daemons
// and where a group's socket lives, and the `start` action, which finds
// the daemon serving a container's group (announcing the container to it)
// or spawns one.
//
// containerd runs `start` for every container, in a process of its own,
// and waits for it. So this package links neither the protobuf runtime
// nor ttrpc nor the task service: the messages start exchanges are read
// and written in the wire format by hand, and the launcher binary
// (cmd/containerd-shim-conmon-v2) built on it starts in a fraction of
// the daemon's time (docs/design.md §1.6). The daemon is package shim.
//
// The CLI contract follows what containerd 1.6 to 2.3 and CRI-O's "vm"
// runtime handler send; see docs/containerd.md.
package launch

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Actions a shim is invoked with. An empty action is daemon mode.
const (
	ActionStart  = "start"
	ActionDelete = "delete"
	ActionDaemon = ""
)

// Flags is the parsed command line.
type Flags struct {
	Namespace     string
	ID            string
	Address       string // containerd's gRPC socket; empty under CRI-O
	PublishBinary string
	Bundle        string
	Socket        string
	DebugSocket   string
	Config        string // our own: path of the shim configuration file
	Debug         bool
	Version       bool // -v: print the version
	Info          bool // -info: print a RuntimeInfo
	Action        string
	// Ignored lists flags this shim does not know. containerd adds flags
	// over time; Go's flag package would exit 2 on them, which fails the
	// start of every container, so they are accepted and ignored.
	Ignored []string
}

var stringFlags = map[string]func(*Flags, string){
	"namespace":      func(f *Flags, v string) { f.Namespace = v },
	"id":             func(f *Flags, v string) { f.ID = v },
	"address":        func(f *Flags, v string) { f.Address = v },
	"publish-binary": func(f *Flags, v string) { f.PublishBinary = v },
	"bundle":         func(f *Flags, v string) { f.Bundle = v },
	"socket":         func(f *Flags, v string) { f.Socket = v },
	"debug-socket":   func(f *Flags, v string) { f.DebugSocket = v },
	"config":         func(f *Flags, v string) { f.Config = v },
}

var boolFlags = map[string]func(*Flags, bool){
	"debug":   func(f *Flags, v bool) { f.Debug = v },
	"v":       func(f *Flags, v bool) { f.Version = v },
	"version": func(f *Flags, v bool) { f.Version = v },
	"info":    func(f *Flags, v bool) { f.Info = v },
}

// ParseFlags parses args (without the program name) the way Go's flag
// package would for the flags containerd sends (-name value, -name=value,
// one or two dashes, flags before the action word), but leniently: an
// unknown flag is recorded in Ignored, taking the next argument as its
// value unless that looks like a flag or an action. The action is the first
// positional argument; more positional arguments are an error.
func ParseFlags(args []string) (Flags, error) {
	var f Flags
	var positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		value, hasValue := "", false
		if k, v, ok := strings.Cut(name, "="); ok {
			name, value, hasValue = k, v, true
		}
		if set, ok := stringFlags[name]; ok {
			if !hasValue {
				if i+1 >= len(args) {
					return f, fmt.Errorf("flag -%s needs a value: %w", name, errdefs.ErrInvalidArgument)
				}
				i++
				value = args[i]
			}
			set(&f, value)
			continue
		}
		if set, ok := boolFlags[name]; ok {
			b := true
			if hasValue {
				var err error
				if b, err = strconv.ParseBool(value); err != nil {
					return f, fmt.Errorf("flag -%s: invalid boolean %q: %w", name, value, errdefs.ErrInvalidArgument)
				}
			}
			set(&f, b)
			continue
		}
		if !hasValue && i+1 < len(args) && !looksLikeFlagOrAction(args[i+1]) {
			i++
		}
		f.Ignored = append(f.Ignored, name)
	}
	switch len(positional) {
	case 0:
	case 1:
		f.Action = positional[0]
	default:
		return f, fmt.Errorf("unexpected arguments %q after action %q: %w",
			positional[1:], positional[0], errdefs.ErrInvalidArgument)
	}
	switch f.Action {
	case ActionStart, ActionDelete, ActionDaemon:
	default:
		return f, fmt.Errorf("unknown action %q (want start, delete or none): %w", f.Action, errdefs.ErrInvalidArgument)
	}
	return f, nil
}

func looksLikeFlagOrAction(s string) bool {
	return (len(s) > 1 && s[0] == '-') || s == ActionStart || s == ActionDelete
}

// ValidateIdentity checks the namespace and ID every action needs.
func (f Flags) ValidateIdentity() error {
	if err := ValidateIdentifier("namespace", f.Namespace); err != nil {
		return err
	}
	return ValidateIdentifier("id", f.ID)
}

// ValidateIdentifier checks s against containerd's identifier rule:
// letters and digits, separated by single '.', '_' or '-', at most 76
// characters. what names the value in the error.
func ValidateIdentifier(what, s string) error {
	const maxLen = 76
	if s == "" {
		return fmt.Errorf("%s must not be empty: %w", what, errdefs.ErrInvalidArgument)
	}
	if len(s) > maxLen {
		return fmt.Errorf("%s %q is longer than %d characters: %w", what, s, maxLen, errdefs.ErrInvalidArgument)
	}
	prevSep := true // no separator first
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			prevSep = false
		case c == '.' || c == '_' || c == '-':
			if prevSep {
				return fmt.Errorf("%s %q: separator at position %d must follow a letter or digit: %w", what, s, i, errdefs.ErrInvalidArgument)
			}
			prevSep = true
		default:
			return fmt.Errorf("%s %q: character %q not allowed (letters, digits, '.', '_', '-'): %w", what, s, c, errdefs.ErrInvalidArgument)
		}
	}
	if prevSep {
		return fmt.Errorf("%s %q must end with a letter or digit: %w", what, s, errdefs.ErrInvalidArgument)
	}
	return nil
}
