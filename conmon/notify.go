package conmon

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"sync"
)

// notifyProxy relays the container's sd-notify messages to the host's
// NOTIFY_SOCKET. Podman mounts <bundle>/notify into the container and
// points NOTIFY_SOCKET at notify.sock there.
type notifyProxy struct {
	conn *net.UnixConn
	host *net.UnixAddr
	diag *Diag
	wg   sync.WaitGroup
}

func newNotifyProxy(bundle, hostSocket string, diag *Diag) (*notifyProxy, error) {
	path := filepath.Join(bundle, "notify", "notify.sock")
	_ = os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	_ = os.Chmod(path, 0o777)
	p := &notifyProxy{conn: conn, host: &net.UnixAddr{Name: hostSocket, Net: "unixgram"}, diag: diag}
	p.wg.Add(1)
	go p.loop()
	return p, nil
}

// forwardable reports whether one line of a notify message goes to the
// host: the state changes systemd acts on (as conmon 2.1.9 and later).
func forwardable(line []byte) bool {
	switch string(line) {
	case "READY=1", "RELOADING=1", "STOPPING=1", "WATCHDOG=1", "WATCHDOG=trigger":
		return true
	}
	for _, p := range []string{"STATUS=", "ERRNO=", "BUSERROR=", "MONOTONIC_USEC="} {
		if bytes.HasPrefix(line, []byte(p)) {
			return true
		}
	}
	return false
}

func (p *notifyProxy) loop() {
	defer p.wg.Done()
	buf := make([]byte, 32768)
	for {
		n, _, err := p.conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		var out [][]byte
		for _, line := range bytes.Split(buf[:n], []byte("\n")) {
			if forwardable(line) {
				out = append(out, line)
			}
		}
		if len(out) == 0 {
			continue
		}
		c, err := net.DialUnix("unixgram", nil, p.host)
		if err != nil {
			p.diag.Warnf("Failed to connect to host notify socket: %v", err)
			continue
		}
		if _, err := c.Write(bytes.Join(out, []byte("\n"))); err != nil {
			p.diag.Warnf("Failed to send notify message: %v", err)
		}
		c.Close()
	}
}

func (p *notifyProxy) Close() {
	p.conn.Close()
	p.wg.Wait()
}
