package logging_test

import (
	"bytes"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// TestBusyPipeGrows: a pipe whose first read fills ReadSize is grown to
// BusyPipeSize; a quiet one keeps the kernel's size.
func TestBusyPipeGrows(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want func(int) bool
	}{
		{"busy", bytes.Repeat([]byte("0123456789abcdef\n"), 3000), func(n int) bool { return n >= logging.BusyPipeSize }},
		{"quiet", []byte("one line\n"), func(n int) bool { return n < logging.BusyPipeSize }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if _, err := w.Write(tc.data); err != nil {
				t.Fatal(err)
			}
			d := &memDriver{}
			p := logging.NewPipeline(logging.Metadata{ID: "x"}, []logging.Driver{d}, logging.PipelineOptions{})
			p.ReadFrom(logging.Stdout, r)
			w.Close()
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			size, err := unix.FcntlInt(r.Fd(), unix.F_GETPIPE_SZ, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(size) {
				t.Fatalf("pipe size %d after %d bytes", size, len(tc.data))
			}
			if st := p.Stats(); st.Read.Bytes != uint64(len(tc.data)-bytes.Count(tc.data, []byte("\n"))) {
				t.Fatalf("read %+v", st.Read)
			}
		})
	}
}
