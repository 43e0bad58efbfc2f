package logging

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"sync"

	"github.com/containerd/errdefs"
)

// Registry maps driver names to their factories. It is the one place where a
// name such as "k8s-file" or "journald" becomes a Driver: front ends never
// switch on driver names themselves.
//
// A Registry is a value built in main (see package builtin for one holding
// every built-in driver); there is no global registry. Its methods are safe
// for concurrent use.
type Registry struct {
	mu        sync.RWMutex
	factories map[string]Factory
	aliases   map[string]string
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{factories: map[string]Factory{}, aliases: map[string]string{}}
}

var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)

// Register adds a driver under name. It fails with ErrInvalidArgument for an
// empty or malformed name (lower-case letters, digits, '.', '_', '-') or a
// nil factory, and with ErrAlreadyExists if name is taken.
func (r *Registry) Register(name string, f Factory) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("log driver name %q: must match %s: %w", name, validName, errdefs.ErrInvalidArgument)
	}
	if f == nil {
		return fmt.Errorf("log driver %q: nil factory: %w", name, errdefs.ErrInvalidArgument)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.factories[name]; ok {
		return fmt.Errorf("log driver %q: %w", name, errdefs.ErrAlreadyExists)
	}
	if _, ok := r.aliases[name]; ok {
		return fmt.Errorf("log driver %q is an alias: %w", name, errdefs.ErrAlreadyExists)
	}
	r.factories[name] = f
	return nil
}

// Alias makes alias another name for the registered driver target (conmon
// accepts "off" and "null" for "none"). Alias fails like Register, and with
// ErrNotFound if target is not registered.
func (r *Registry) Alias(alias, target string) error {
	if !validName.MatchString(alias) {
		return fmt.Errorf("log driver alias %q: %w", alias, errdefs.ErrInvalidArgument)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.factories[target]; !ok {
		return fmt.Errorf("log driver alias %q: target %q: %w", alias, target, errdefs.ErrNotFound)
	}
	if _, ok := r.factories[alias]; ok {
		return fmt.Errorf("log driver %q: %w", alias, errdefs.ErrAlreadyExists)
	}
	if _, ok := r.aliases[alias]; ok {
		return fmt.Errorf("log driver %q: %w", alias, errdefs.ErrAlreadyExists)
	}
	r.aliases[alias] = target
	return nil
}

// Resolve returns the canonical name for name (following an alias) and
// whether it is registered.
func (r *Registry) Resolve(name string) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if t, ok := r.aliases[name]; ok {
		name = t
	}
	_, ok := r.factories[name]
	return name, ok
}

// Names returns the registered driver names (aliases excluded), sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.factories))
	for n := range r.factories {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open builds the driver registered as name. The Driver returned wraps the
// factory's (it carries the registry name, see DriverName): use Unwrap
// before type-asserting an optional capability (Readable, Syncer, ...).
// An unknown name fails with
// ErrInvalidArgument naming it and the known drivers; a factory error is
// returned wrapped with the driver's name, classified ErrInvalidArgument
// unless the factory classified it already.
func (r *Registry) Open(ctx context.Context, name string, info Info) (Driver, error) {
	canon, ok := r.Resolve(name)
	if !ok {
		return nil, fmt.Errorf("unknown log driver %q (known: %v): %w", name, r.Names(), errdefs.ErrInvalidArgument)
	}
	r.mu.RLock()
	f := r.factories[canon]
	r.mu.RUnlock()
	d, err := f(ctx, info)
	if err != nil {
		if classified(err) {
			return nil, fmt.Errorf("log driver %s: %w", canon, err)
		}
		return nil, fmt.Errorf("log driver %s: %w", canon, errorsJoinInvalid(err))
	}
	if d == nil {
		return nil, fmt.Errorf("log driver %s: factory returned no driver: %w", canon, errdefs.ErrInternal)
	}
	return named{Driver: d, name: canon}, nil
}

// classified reports whether err already carries an errdefs class.
func classified(err error) bool {
	for _, is := range []func(error) bool{
		errdefs.IsInvalidArgument, errdefs.IsNotFound, errdefs.IsAlreadyExists,
		errdefs.IsPermissionDenied, errdefs.IsResourceExhausted, errdefs.IsFailedPrecondition,
		errdefs.IsUnavailable, errdefs.IsNotImplemented, errdefs.IsInternal, errdefs.IsConflict,
	} {
		if is(err) {
			return true
		}
	}
	return false
}

type invalidWrap struct{ err error }

func (e invalidWrap) Error() string   { return e.err.Error() }
func (e invalidWrap) Unwrap() []error { return []error{e.err, errdefs.ErrInvalidArgument} }

func errorsJoinInvalid(err error) error { return invalidWrap{err} }

// named remembers a driver's registry name for Stats; every optional
// capability of the wrapped driver is forwarded.
type named struct {
	Driver
	name string
}

// Name returns the registry name the driver was opened under.
func (n named) Name() string { return n.name }

// Unwrap returns the driver the factory built.
func (n named) Unwrap() Driver { return n.Driver }

// DriverName returns the registry name of a driver opened by a Registry,
// else its Name() if it has one, else its Go type.
func DriverName(d Driver) string {
	if n, ok := d.(interface{ Name() string }); ok {
		return n.Name()
	}
	return fmt.Sprintf("%T", d)
}

// Unwrap returns the driver a Registry's wrapper holds, or d itself. Use it
// before type-asserting an optional capability.
func Unwrap(d Driver) Driver {
	for {
		u, ok := d.(interface{ Unwrap() Driver })
		if !ok {
			return d
		}
		d = u.Unwrap()
	}
}
