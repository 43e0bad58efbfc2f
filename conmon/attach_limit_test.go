package conmon

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestAttachClientLimit: at most maxAttachClients are attached at once;
// the next one is disconnected (reads EOF) and the others stay.
func TestAttachClientLimit(t *testing.T) {
	dir := t.TempDir()
	s, err := newAttachServer(dir, "", "", true, &bufStdin{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	addr := &net.UnixAddr{Name: filepath.Join(dir, "attach"), Net: "unixpacket"}
	var conns []*net.UnixConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range maxAttachClients {
		c, err := net.DialUnix("unixpacket", nil, addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		s.mu.Lock()
		n := len(s.clients)
		s.mu.Unlock()
		if n == maxAttachClients {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d clients accepted, want %d", n, maxAttachClients)
		}
		time.Sleep(5 * time.Millisecond)
	}
	extra, err := net.DialUnix("unixpacket", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := extra.Read(make([]byte, 16)); n != 0 || err == nil {
		t.Fatalf("client over the limit read %d bytes, %v; want EOF", n, err)
	}
	s.mu.Lock()
	n := len(s.clients)
	s.mu.Unlock()
	if n != maxAttachClients {
		t.Fatalf("%d clients after the refusal, want %d", n, maxAttachClients)
	}
}
