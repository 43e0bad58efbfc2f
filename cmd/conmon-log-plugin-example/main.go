// Command conmon-log-plugin-example is an example conmon-v2 log plugin: it
// writes every record it receives as one JSON object per line to a file.
// docs/log-plugins.md walks through it.
//
// Started by conmon-v2 (log driver "plugin", option path=<this program>),
// it serves the connection conmon-v2 hands it. Started with --socket PATH,
// it serves any number of containers on that socket (option socket=PATH).
//
// Plugin options (given to conmon-v2 as driver options):
//
//	file                the JSON-lines file to append to (required)
//	exit-after-records  for tests: exit with status 1 after this many
//	                    records, to exercise conmon-v2's restarts
//
// Each line: {"time", "stream", "log", "partial" (only when true),
// "container_id", "container_name", "tag", "labels"}. "log" is a JSON
// string: bytes that are not UTF-8 become U+FFFD.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	loggingv1 "github.com/containers/conmon-v2/api/logging/v1"
	"github.com/containers/conmon-v2/logging/plugin"
)

func main() {
	socket := flag.String("socket", "", "serve on this unix socket instead of the connection conmon-v2 passes")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	svc := newService()
	defer svc.closeAll()
	var err error
	if *socket != "" {
		err = plugin.ServeSocket(ctx, *socket, svc)
	} else {
		err = plugin.Serve(ctx, svc)
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "conmon-log-plugin-example:", err)
		os.Exit(1)
	}
}

// service implements loggingv1.LogDriverService. Handles are independent;
// each has its own file.
type service struct {
	mu      sync.Mutex
	next    int
	handles map[string]*handle
}

type handle struct {
	mu        sync.Mutex
	meta      *loggingv1.Metadata
	path      string
	f         *os.File
	exitAfter int // 0: never
	written   int
}

type line struct {
	Time          string            `json:"time"`
	Stream        string            `json:"stream"`
	Log           string            `json:"log"`
	Partial       bool              `json:"partial,omitempty"`
	ContainerID   string            `json:"container_id"`
	ContainerName string            `json:"container_name,omitempty"`
	Tag           string            `json:"tag,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
}

func newService() *service { return &service{handles: map[string]*handle{}} }

// invalid returns an InvalidArgument status naming the option; conmon-v2
// shows the message when it refuses the container.
func invalid(format string, args ...any) error {
	return errgrpc.ToGRPC(fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...))
}

func (s *service) Open(_ context.Context, req *loggingv1.OpenRequest) (*loggingv1.OpenResponse, error) {
	h := &handle{meta: req.GetMetadata()}
	for k, v := range req.GetOptions() {
		switch k {
		case "file":
			h.path = v
		case "exit-after-records":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return nil, invalid("option exit-after-records=%q: want a count >= 1", v)
			}
			h.exitAfter = n
		default:
			return nil, invalid("unknown option %q (known: file, exit-after-records)", k)
		}
	}
	if h.path == "" {
		return nil, invalid("option file (the JSON-lines file) is required")
	}
	if err := h.open(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	id := strconv.Itoa(s.next)
	s.handles[id] = h
	return &loggingv1.OpenResponse{Handle: id}, nil
}

func (h *handle) open() error {
	f, err := os.OpenFile(h.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	h.f = f
	return nil
}

func (s *service) get(id string) (*handle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.handles[id]
	if !ok {
		return nil, errgrpc.ToGRPC(fmt.Errorf("handle %q: %w", id, errdefs.ErrNotFound))
	}
	return h, nil
}

func (s *service) Write(_ context.Context, req *loggingv1.WriteRequest) (*loggingv1.WriteResponse, error) {
	h, err := s.get(req.GetHandle())
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// One write per batch: the batch is the unit conmon-v2 retries.
	var buf []byte
	for _, r := range req.GetRecords() {
		stream := "stdout"
		if r.GetStream() == loggingv1.Stream_STDERR {
			stream = "stderr"
		}
		b, err := json.Marshal(line{
			Time:          time.Unix(0, r.GetTimeUnixNano()).Format(time.RFC3339Nano),
			Stream:        stream,
			Log:           string(r.GetLine()),
			Partial:       r.GetPartial(),
			ContainerID:   h.meta.GetId(),
			ContainerName: h.meta.GetName(),
			Tag:           h.meta.GetTag(),
			Labels:        h.meta.GetLabels(),
		})
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		buf = append(append(buf, b...), '\n')
		h.written++
		if h.exitAfter > 0 && h.written >= h.exitAfter {
			_, _ = h.f.Write(buf)
			os.Exit(1) // as asked: a crash after N records
		}
	}
	if _, err := h.f.Write(buf); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &loggingv1.WriteResponse{}, nil
}

func (s *service) Reopen(_ context.Context, req *loggingv1.ReopenRequest) (*loggingv1.ReopenResponse, error) {
	h, err := s.get(req.GetHandle())
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.f.Close()
	if err := h.open(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &loggingv1.ReopenResponse{}, nil
}

func (s *service) Close(_ context.Context, req *loggingv1.CloseRequest) (*loggingv1.CloseResponse, error) {
	h, err := s.get(req.GetHandle())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.handles, req.GetHandle())
	s.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.f.Close(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &loggingv1.CloseResponse{}, nil
}

func (s *service) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, h := range s.handles {
		h.f.Close()
		delete(s.handles, id)
	}
}
