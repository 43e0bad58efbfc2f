package conmon

import (
	"context"
	"io"
	"sync"

	"github.com/containers/conmon-v2/logging"
)

// tapOnly is a LogPipeline without drivers: it reads the streams and feeds
// the tap (the attach clients). It serves -l none and passthrough.
type tapOnly struct {
	tap func(logging.Stream, []byte)
	wg  sync.WaitGroup
}

// TapOnlyLogs opens a LogPipeline that logs nothing.
func TapOnlyLogs(_ context.Context, _ *Config, tap func(logging.Stream, []byte)) (LogPipeline, error) {
	return &tapOnly{tap: tap}, nil
}

func (t *tapOnly) ReadFrom(s logging.Stream, r io.Reader) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		buf := make([]byte, 8192)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				t.tap(s, buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
}

func (t *tapOnly) Reopen() error { return nil }
func (t *tapOnly) Close() error  { t.wg.Wait(); return nil }
