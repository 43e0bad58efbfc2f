package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
)

// record is what conmonctl remembers of a container, in
// <root>/containers/<id>/container.json. The shim is the authority on the
// container's state; the record says how to reach it and where its logs are.
type record struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Group     string            `json:"group"`
	Namespace string            `json:"namespace"`
	Bundle    string            `json:"bundle"`
	Address   string            `json:"address"`
	Created   time.Time         `json:"created"`
	Args      []string          `json:"args"`
	Terminal  bool              `json:"terminal"`
	Stdin     bool              `json:"stdin"`
	Remove    bool              `json:"auto_remove"`
	LogDriver string            `json:"log_driver"`
	LogPath   string            `json:"log_path,omitempty"`
	LogOpts   map[string]string `json:"log_opts,omitempty"`
}

// store is the state root.
type store struct {
	root string
}

func (s store) containersDir() string { return filepath.Join(s.root, "containers") }

func (s store) dir(id string) string { return filepath.Join(s.containersDir(), id) }

// lock takes the root's exclusive lock (held while names are checked and
// records created or removed) and returns its release.
func (s store) lock() (func(), error) {
	if err := os.MkdirAll(s.root, 0o711); err != nil {
		return nil, fmt.Errorf("state root %s: %w", s.root, err)
	}
	f, err := os.OpenFile(filepath.Join(s.root, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state root %s: %w", s.root, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock state root %s: %w", s.root, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

func (s store) save(r *record) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	dir := s.dir(r.ID)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".container.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "container.json"))
}

// list returns every record, oldest first. Unreadable entries (a run that
// is being created) are skipped.
func (s store) list() ([]*record, error) {
	entries, err := os.ReadDir(s.containersDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*record
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(s.containersDir(), e.Name(), "container.json"))
		if err != nil {
			continue
		}
		var r record
		if json.Unmarshal(data, &r) != nil || r.ID != e.Name() {
			continue
		}
		out = append(out, &r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// find resolves a container by name, full ID or unique ID prefix.
func (s store) find(ref string) (*record, error) {
	if ref == "" {
		return nil, fmt.Errorf("empty container name: %w", errdefs.ErrInvalidArgument)
	}
	all, err := s.list()
	if err != nil {
		return nil, err
	}
	var prefixed []*record
	for _, r := range all {
		if r.Name == ref || r.ID == ref {
			return r, nil
		}
		if strings.HasPrefix(r.ID, ref) {
			prefixed = append(prefixed, r)
		}
	}
	switch len(prefixed) {
	case 1:
		return prefixed[0], nil
	case 0:
		return nil, fmt.Errorf("no such container: %s: %w", ref, errdefs.ErrNotFound)
	}
	return nil, fmt.Errorf("container ID prefix %s is ambiguous (%d containers): %w", ref, len(prefixed), errdefs.ErrInvalidArgument)
}

// nameTaken reports whether a container has name as its name or full ID
// (an ID prefix does not count: names are short, IDs are hex).
func (s store) nameTaken(name string) bool {
	all, _ := s.list()
	for _, r := range all {
		if r.Name == name || r.ID == name {
			return true
		}
	}
	return false
}

func (s store) remove(id string) error {
	if err := client.ValidateID(id); err != nil {
		return err
	}
	return os.RemoveAll(s.dir(id))
}

func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
