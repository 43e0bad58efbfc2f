package conmon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ctl message types written to <bundle>/ctl as "type height width\n".
const (
	ctlResize     = 1
	ctlReopenLogs = 2
)

// ctlHandler acts on ctl messages.
type ctlHandler interface {
	Resize(height, width uint16)
	ReopenLogs()
}

// ctlFifos holds <bundle>/ctl and <bundle>/winsz. Each is opened for
// reading (non-blocking) and once for writing, so writers never see a
// missing reader and the reader never sees a hang-up storm.
type ctlFifos struct {
	ctlR, ctlW *os.File
	winR, winW *os.File
	h          ctlHandler
	diag       *Diag
	wg         sync.WaitGroup
}

func makeFifo(path string) (r, w *os.File, err error) {
	_ = os.Remove(path)
	if err := unix.Mkfifo(path, 0o660); err != nil {
		return nil, nil, fmt.Errorf("mkfifo %s: %w", path, err)
	}
	r, err = os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	w, err = os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	return r, w, nil
}

func newCtlFifos(bundle string, h ctlHandler, diag *Diag) (*ctlFifos, error) {
	c := &ctlFifos{h: h, diag: diag}
	var err error
	if c.ctlR, c.ctlW, err = makeFifo(filepath.Join(bundle, "ctl")); err != nil {
		return nil, err
	}
	if c.winR, c.winW, err = makeFifo(filepath.Join(bundle, "winsz")); err != nil {
		c.ctlR.Close()
		c.ctlW.Close()
		return nil, err
	}
	c.wg.Add(1)
	go c.readCtl()
	return c, nil
}

// readCtl reads ctl messages; several lines in one read, and lines split
// across reads, are all handled (conmon before 2.2 lost all but the first).
func (c *ctlFifos) readCtl() {
	defer c.wg.Done()
	buf := make([]byte, 200)
	var pending []byte
	for {
		n, err := c.ctlR.Read(buf)
		if n > 0 {
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				c.handle(string(pending[:i]))
				pending = pending[i+1:]
			}
			if len(pending) > 4096 {
				pending = nil
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// EOF cannot happen while we hold a writer; anything else
			// ends the reader.
			return
		}
	}
}

func (c *ctlFifos) handle(line string) {
	f := strings.Fields(line)
	if len(f) < 3 {
		c.diag.Warnf("Failed to sscanf message")
		return
	}
	var v [3]int
	for i := range v {
		n, err := strconv.Atoi(f[i])
		if err != nil {
			c.diag.Warnf("Failed to sscanf message")
			return
		}
		v[i] = n
	}
	switch v[0] {
	case ctlResize:
		c.diag.Debugf("Message type: %d, Height: %d, Width: %d", v[0], v[1], v[2])
		c.h.Resize(uint16(v[1]), uint16(v[2]))
	case ctlReopenLogs:
		c.h.ReopenLogs()
	default:
		c.diag.Warnf("Unknown message type: %d", v[0])
	}
}

// Close stops the reader and closes the FIFOs (the files stay; Podman
// removes them).
func (c *ctlFifos) Close() {
	c.ctlR.Close()
	c.wg.Wait()
	c.ctlW.Close()
	c.winR.Close()
	c.winW.Close()
}
