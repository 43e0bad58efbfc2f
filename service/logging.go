package service

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

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

// pipelineTap feeds a logging.Pipeline from the stdio copiers: each stream
// is a pipe the pipeline reads until the copier closes it.
type pipelineTap struct {
	p *logging.Pipeline
}

func (t *pipelineTap) Writer(s logging.Stream) io.WriteCloser {
	pr, pw := io.Pipe()
	t.p.ReadFrom(s, pr)
	return pw
}

// Close waits for the pipeline to read every stream to its end, then
// flushes and closes its drivers.
func (t *pipelineTap) Close() error { return t.p.Close() }
