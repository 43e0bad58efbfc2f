package service

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/process"
)

// criContainerName is the annotation CRI puts the container's name in.
const criContainerName = "io.kubernetes.cri.container-name"

// AnnotationLogging returns the LogTapFunc that gives a container a
// logging pipeline when its spec carries io.containers.conmon-v2.log.*
// annotations, applied over base and built with drivers from reg. The
// pipeline gets a copy of the output; containerd's FIFOs still get theirs.
// Drivers that need a directory use stateDir/<id>.
func AnnotationLogging(reg *logging.Registry, base logging.Config, stateDir string) LogTapFunc {
	return func(ctx context.Context, id, namespace string, spec *specs.Spec) (process.Tap, error) {
		if spec == nil || !hasLogAnnotation(spec.Annotations) {
			return nil, nil
		}
		cfg := base
		if err := cfg.ApplyAnnotations(spec.Annotations); err != nil {
			return nil, err
		}
		meta := logging.Metadata{ID: id, Name: id, Namespace: namespace}
		if n := spec.Annotations[criContainerName]; n != "" {
			meta.Name = n
		}
		// The task's state directory (its record's) is made later;
		// drivers without a path put their file in it now.
		dir := filepath.Join(stateDir, id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("log directory of %q: %w", id, err)
		}
		p, err := cfg.Open(ctx, reg, meta, dir)
		if err != nil {
			return nil, err
		}
		return &pipelineTap{p: p}, nil
	}
}

func hasLogAnnotation(ann map[string]string) bool {
	for k := range ann {
		if strings.HasPrefix(k, logging.AnnotationPrefix) {
			return true
		}
	}
	return false
}

// pipelineTap feeds a logging.Pipeline from the stdio copiers, which
// write straight into it (WriteChunk): no pipe and no reader goroutine per
// stream, so an idle container costs the pipeline nothing but its
// drivers.
type pipelineTap struct {
	p *logging.Pipeline

	mu     sync.RWMutex
	closed bool // guarded by mu: no WriteChunk after the pipeline's Close
}

func (t *pipelineTap) Writer(s logging.Stream) io.WriteCloser {
	return &tapWriter{t: t, s: s}
}

// Close flushes and closes the pipeline's drivers. A writer still in use
// (a copier IO.Close gave up on) is waited for; its later writes are
// dropped.
func (t *pipelineTap) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return t.p.Close()
}

// tapWriter is one stream's way into the pipeline. A write is cut into
// pieces of logging.DefaultReadSize, the size of the pipeline's own reads,
// so that records are split exactly as when the pipeline reads the stream
// itself (a record is never longer than one read).
type tapWriter struct {
	t *pipelineTap
	s logging.Stream
}

func (w *tapWriter) Write(b []byte) (int, error) {
	w.t.mu.RLock()
	defer w.t.mu.RUnlock()
	if w.t.closed {
		return 0, io.ErrClosedPipe
	}
	// Cut into pieces of the pipeline's read size, flushed once at the end.
	w.t.p.WriteChunks(w.s, b)
	return len(b), nil
}

// Close ends nothing: the stream's end is the process's, and the pipeline
// is closed once, by the tap's Close, after every copier is done.
func (w *tapWriter) Close() error { return nil }
