package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
)

type logQuery struct {
	since      time.Time
	tail       int // -1: all
	follow     bool
	timestamps bool
	ready      func() // logging.ReadOptions.Ready
}

func cmdLogs(ctx context.Context, a *app, args []string) error {
	if a.opts.logStats {
		if a.opts.follow || a.opts.since != "" || a.opts.tail != -1 || a.opts.timestamps {
			return usagef("--stats takes no -f, -t, --since or --tail")
		}
		return cmdLogStats(ctx, a, args) // logstats.go
	}
	if err := needArgs(args, 1, 1, "container NAME"); err != nil {
		return err
	}
	q := logQuery{tail: a.opts.tail, follow: a.opts.follow, timestamps: a.opts.timestamps}
	if a.opts.since != "" {
		t, err := parseSince(a.opts.since, time.Now())
		if err != nil {
			return usagef("--since %q: %v", a.opts.since, err)
		}
		q.since = t
	}
	if q.tail < -1 {
		return usagef("--tail %d: must be 0 or more", q.tail)
	}
	r, err := a.store().find(args[0])
	if err != nil {
		return err
	}
	src, err := logSource(r)
	if err != nil {
		return err
	}
	r.LogPath, r.LogDriver = src.Path, src.Format
	var exited chan struct{}
	if q.follow {
		exited = make(chan struct{})
		s, err := a.connect(ctx, r)
		if err != nil {
			close(exited) // no shim: nothing more will be written
		} else {
			defer s.Close()
			go func() {
				defer close(exited)
				_, _ = s.Wait(ctx, r.ID, "")
			}()
		}
	}
	return followLog(ctx, a, r, q, exited)
}

// defaultShimStateDir is the shim's state_dir when its configuration file
// does not set another (docs/containerd.md).
const defaultShimStateDir = "/run/conmon-v2/state"

// logSource says where the logs of r can be read back: its k8s-file or
// json-file, or, for a write-only driver (journald, syslog, fluentd, none),
// the shim's local k8s-file cache of the container.
func logSource(r *record) (logging.Source, error) {
	if r.LogPath != "" {
		return logging.Source{Path: r.LogPath, Format: r.LogDriver}, nil
	}
	cache := filepath.Join(defaultShimStateDir, r.Namespace, r.ID, logging.CacheDirName, "ctr.log")
	if _, err := os.Stat(cache); err == nil {
		return logging.Source{Path: cache, Format: logging.FormatK8sFile}, nil
	}
	return logging.Source{}, fmt.Errorf("container %s logs with %s, and no local log cache was found at %s: %w",
		r.Name, r.LogDriver, cache, errdefs.ErrNotFound)
}

// parseSince accepts an RFC 3339 time, a Unix time in seconds, or a
// duration before now ("10m", "1h30m").
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, errors.New("a duration must not be negative")
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if sec, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(sec, 0), nil
	}
	return time.Time{}, errors.New("want an RFC 3339 time, Unix seconds or a duration such as 10m")
}

// followLog prints the log of r as q asks, with the logging package's
// reader (the same formats and rotation scheme the drivers write). With
// q.follow it keeps printing new records, across rotations, until exited
// is closed and the file is drained, or ctx ends.
func followLog(ctx context.Context, a *app, r *record, q logQuery, exited <-chan struct{}) error {
	opts := logging.ReadOptions{
		Source: logging.Source{Path: r.LogPath, Format: r.LogDriver},
		Since:  q.since,
		Tail:   q.tail,
		Follow: q.follow,
		Done:   exited,
		Ready:  q.ready,
	}
	atLineStart := map[logging.Stream]bool{logging.Stdout: true, logging.Stderr: true}
	err := logging.ReadLogs(ctx, opts, func(rec *logging.Record) error {
		w := a.stdout
		if rec.Stream == logging.Stderr {
			w = a.stderr
		}
		if q.timestamps && atLineStart[rec.Stream] {
			if _, err := fmt.Fprintf(w, "%s ", rec.Time.UTC().Format(time.RFC3339Nano)); err != nil {
				return err
			}
		}
		atLineStart[rec.Stream] = !rec.Partial
		if _, err := w.Write(rec.Line); err != nil {
			return err
		}
		if !rec.Partial {
			_, err := w.Write([]byte("\n"))
			return err
		}
		return nil
	})
	if errdefs.IsNotFound(err) && q.follow {
		return nil
	}
	if errdefs.IsNotFound(err) {
		// No output yet (or the log was removed): nothing to print.
		return nil
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}
