package logging_test

import (
	"bytes"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/pipesize"
	"github.com/containers/conmon-v2/logging"
)

// TestBusyPipeGrows: a pipe whose read comes back full (the pipe's whole
// size, or ReadSize) is grown to pipesize.Busy (where the policy allows
// it); a quiet one keeps the kernel's size.
func TestBusyPipeGrows(t *testing.T) {
	line := []byte("0123456789abcdef\n")
	for _, tc := range []struct {
		name     string
		readSize int
		data     func(pipe int) []byte
		grows    bool
	}{
		// A read as large as the pipe takes it whole: full.
		{"full", 64 << 10, func(pipe int) []byte {
			b := bytes.Repeat(line, pipe/len(line))
			return append(b, bytes.Repeat([]byte("x"), pipe-len(b)-1)...)
		}, true},
		{"busy", 0, func(int) []byte { return bytes.Repeat(line, 3000) }, true},
		{"quiet", 0, func(int) []byte { return []byte("one line\n") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			def, err := unix.FcntlInt(r.Fd(), unix.F_GETPIPE_SZ, 0)
			if err != nil {
				t.Fatal(err)
			}
			if tc.readSize > 0 && tc.readSize != def {
				t.Skipf("pipes here hold %d bytes, not %d", def, tc.readSize)
			}
			data := tc.data(def)
			if tc.readSize > 0 {
				data = append(data, '\n') // exactly the pipe's size
			}
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			d := &memDriver{}
			p := logging.NewPipeline(logging.Metadata{ID: "x"}, []logging.Driver{d}, logging.PipelineOptions{ReadSize: tc.readSize})
			p.ReadFrom(logging.Stdout, r)
			w.Close()
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			size, err := unix.FcntlInt(r.Fd(), unix.F_GETPIPE_SZ, 0)
			if err != nil {
				t.Fatal(err)
			}
			want := def
			if tc.grows && pipesize.Allowed() {
				want = pipesize.Busy
			}
			if size != want {
				t.Fatalf("pipe size %d after %d bytes, want %d", size, len(data), want)
			}
			if st := p.Stats(); st.Read.Bytes != uint64(len(data)-bytes.Count(data, []byte("\n"))) {
				t.Fatalf("read %+v", st.Read)
			}
		})
	}
}
