package process

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// RecordFile is the name of a task's record inside its state directory.
const RecordFile = "state.json"

// Record is what the shim keeps on disk about a task, so that a restarted
// shim can find and re-adopt its containers. It is rewritten atomically on
// every transition of any of the task's processes.
type Record struct {
	ID         string            `json:"id"`
	Namespace  string            `json:"namespace,omitempty"`
	Bundle     string            `json:"bundle"`
	Pid        int               `json:"pid"`
	Stdio      Stdio             `json:"stdio"`
	Status     string            `json:"status"`
	ExitStatus int               `json:"exit_status"`
	ExitedAt   *time.Time        `json:"exited_at,omitempty"`
	CreatedAt  time.Time         `json:"created_at"`
	StartedAt  *time.Time        `json:"started_at,omitempty"`
	Execs      map[string]Record `json:"execs,omitempty"`
	// Spec is an exec's process spec (needed to start it after a live
	// upgrade).
	Spec *specs.Process `json:"spec,omitempty"`
	// InitExitDeferred is init's exit while it is held back for its
	// execs (Container.InitExitDeferred).
	InitExitDeferred *Exit `json:"init_exit_deferred,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func processRecord(p *Process) Record {
	return Record{
		ID:         p.ID,
		Pid:        p.Pid,
		Stdio:      p.Stdio,
		Status:     p.Status.String(),
		ExitStatus: p.ExitStatus,
		ExitedAt:   timePtr(p.ExitedAt),
		CreatedAt:  p.CreatedAt,
		StartedAt:  timePtr(p.StartedAt),
		Spec:       p.Spec,
	}
}

// Record returns c's current record. Call under the owner's lock.
func (c *Container) Record() Record {
	r := processRecord(c.Init)
	r.Namespace = c.Namespace
	r.Bundle = c.Bundle
	r.InitExitDeferred = c.InitExitDeferred
	if len(c.Execs) > 0 {
		r.Execs = make(map[string]Record, len(c.Execs))
		for id, e := range c.Execs {
			r.Execs[id] = processRecord(e)
		}
	}
	return r
}

// WriteRecord writes r as dir/<id>/state.json through a temporary file and
// a rename, so a reader never sees a partial record.
func WriteRecord(dir string, r Record) error {
	data, err := MarshalRecord(r)
	if err != nil {
		return err
	}
	return WriteRecordData(dir, r.ID, data)
}

// MarshalRecord encodes r as WriteRecord writes it.
func MarshalRecord(r Record) ([]byte, error) {
	return json.MarshalIndent(r, "", "  ")
}

// WriteRecordData is WriteRecord of a record MarshalRecord encoded, for
// a caller that encodes under its lock and writes later.
func WriteRecordData(dir, id string, data []byte) error {
	d := filepath.Join(dir, id)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	if err := replaceFile(d, RecordFile, ".state-*", data); err != nil {
		return fmt.Errorf("writing state record of %q: %w", id, err)
	}
	return nil
}

// replaceFile writes data as d/name through a temporary file in d (named
// after pattern, as os.CreateTemp takes it) and a rename, so a reader
// never sees a partial file. The temporary file is gone on error.
func replaceFile(d, name, pattern string, data []byte) error {
	tmp, err := os.CreateTemp(d, pattern)
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(d, name))
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}

// OOMCountFile holds, beside a task's record, the count of OOM kills of
// its cgroup that its monitor has reported (decimal text). The monitor
// writes it as it reports kills, and whoever takes the task over (a live
// upgrade's next binary, a daemon after a crash) arms the task's OOM watch
// from it (WatchOOMFrom): the kills counted while no watch ran are
// reported, none twice.
const OOMCountFile = "oom_kills"

// WriteOOMCount writes n as task id's OOMCountFile under dir, through a
// temporary file and a rename. A task without a state directory (deleted
// meanwhile) gets none: the directory is not made again.
func WriteOOMCount(dir, id string, n uint64) error {
	err := replaceFile(filepath.Join(dir, id), OOMCountFile, ".oom-*", strconv.AppendUint(nil, n, 10))
	switch {
	case err == nil, errors.Is(err, fs.ErrNotExist):
		return nil
	}
	return fmt.Errorf("writing the OOM count of %q: %w", id, err)
}

// ReadOOMCount returns task id's OOMCountFile under dir; ok is false when
// there is none (no kill reported, or a monitor of an older build) or it
// does not parse.
func ReadOOMCount(dir, id string) (n uint64, ok bool) {
	data, err := os.ReadFile(filepath.Join(dir, id, OOMCountFile))
	if err != nil {
		return 0, false
	}
	n, err = strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n, err == nil
}

// ReadRecord reads the record of task id under dir.
func ReadRecord(dir, id string) (Record, error) {
	var r Record
	data, err := os.ReadFile(filepath.Join(dir, id, RecordFile))
	if err != nil {
		return r, err
	}
	err = json.Unmarshal(data, &r)
	return r, err
}

// RemoveRecord removes the state directory of task id.
func RemoveRecord(dir, id string) error {
	return os.RemoveAll(filepath.Join(dir, id))
}
