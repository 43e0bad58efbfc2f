package service

import (
	"context"
	"log/slog"
	"strconv"
	"sync"

	"github.com/containers/conmon-v2/process"
)

// recordWriter writes the task records behind the requests that change them.
// A record is encoded under the service lock, in the order the lock
// decided, and queued; one goroutine writes the newest queued state of
// each task (a later state replaces one not yet written) and removes the
// record of a deleted task. Writes happen one at a time, so the file of a
// task only ever moves forward.
//
// Why: a record write is a new file and a rename, about 40 µs on tmpfs
// but 0.4 to 1 ms on ext4, and an exec changes its task's record four
// times (registered, started, exited, deleted). Written in the request,
// they were the largest part of an exec's latency above `runc exec` with
// the state directory on a disk (bench/README.md, "Exec").
//
// What it costs: a monitor killed between an answer and the write (one
// write's time) leaves the previous record, which a restarted monitor
// already had to cope with (it could die between runc exec and the
// write). Create and the init's Delete flush before they answer, so a
// restarted monitor never misses a task containerd knows of, nor adopts
// one it deleted; only exec and start transitions are written behind. A
// live upgrade (Frozen.Commit) and Close flush, so the next binary reads
// every state the old one answered with.
type recordWriter struct {
	dir string
	log *slog.Logger

	wmu sync.Mutex // held while an entry is taken and written: one write at a time

	mu      sync.Mutex
	pending map[entry][]byte // nil: remove the record; guarded by mu
	order   []entry          // entries pending, oldest first; guarded by mu
	stopped bool             // no writer goroutine: put writes itself; guarded by mu
	wake    chan struct{}
}

// entry names a file the writer keeps: a task's record, or its count of
// OOM kills reported (process.OOMCountFile, data the count's text).
type entry struct {
	id  string
	oom bool
}

func newRecordWriter(dir string, log *slog.Logger) *recordWriter {
	return &recordWriter{dir: dir, log: log, pending: make(map[entry][]byte), wake: make(chan struct{}, 1)}
}

// run writes queued entries until ctx is done, then what is left.
func (r *recordWriter) run(ctx context.Context) {
	for {
		select {
		case <-r.wake:
			r.flush()
		case <-ctx.Done():
			r.mu.Lock()
			r.stopped = true
			r.mu.Unlock()
			r.flush()
			return
		}
	}
}

// put queues data (nil: remove) as task id's record. Once the writer has
// stopped it writes at once, in the caller.
func (r *recordWriter) put(id string, data []byte) { r.queue(entry{id: id}, data) }

// putOOM queues n as task id's count of OOM kills reported. Removing the
// task's record removes it too; a count queued after that is not written.
func (r *recordWriter) putOOM(id string, n uint64) {
	r.queue(entry{id: id, oom: true}, strconv.AppendUint(nil, n, 10))
}

func (r *recordWriter) queue(e entry, data []byte) {
	r.mu.Lock()
	if _, ok := r.pending[e]; !ok {
		r.order = append(r.order, e)
	}
	r.pending[e] = data
	stopped := r.stopped
	r.mu.Unlock()
	if stopped {
		r.flush()
		return
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// flush returns once every entry queued before it was called is on disk
// (or failed and was logged).
func (r *recordWriter) flush() {
	for r.writeNext() {
	}
}

// writeNext writes the oldest queued entry; false when none was queued.
// Taking wmu first makes it wait for a write in progress.
func (r *recordWriter) writeNext() bool {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.Lock()
	if len(r.order) == 0 {
		r.mu.Unlock()
		return false
	}
	e := r.order[0]
	r.order[0] = entry{}
	r.order = r.order[1:]
	data := r.pending[e]
	delete(r.pending, e)
	r.mu.Unlock()
	id := e.id
	if e.oom {
		n, _ := strconv.ParseUint(string(data), 10, 64)
		if err := process.WriteOOMCount(r.dir, id, n); err != nil {
			r.log.Error("writing the OOM count", "task", id, "error", err)
		}
		return true
	}
	if data == nil {
		if err := process.RemoveRecord(r.dir, id); err != nil {
			r.log.Error("removing state record", "task", id, "error", err)
		}
		return true
	}
	if err := process.WriteRecordData(r.dir, id, data); err != nil {
		r.log.Error("writing state record", "task", id, "error", err)
	}
	return true
}
