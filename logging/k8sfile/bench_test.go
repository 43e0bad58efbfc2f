package k8sfile_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

// chunks is an endless stream of lines of lineLen bytes (newline
// included), n*8192 bytes long, read as from a 64 KiB pipe that is always
// full: a read returns what fits in its buffer, at most 64 KiB.
type chunks struct {
	data []byte
	off  int
	left int
}

const pipeSize = 64 << 10

func newChunks(lineLen, n int) *chunks {
	line := strings.Repeat("x", lineLen-1) + "\n"
	var stream bytes.Buffer
	for stream.Len() < 2*pipeSize+lineLen {
		stream.WriteString(line)
	}
	return &chunks{data: stream.Bytes(), left: n * logging.DefaultReadSize}
}

func (c *chunks) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(len(p), pipeSize, c.left)]
	if c.off+len(p) > len(c.data) {
		c.off = 0
	}
	n := copy(p, c.data[c.off:])
	c.off = (c.off + n) % (len(c.data) - pipeSize)
	c.left -= n
	return n, nil
}

// benchPipeline pushes b.N times 8192 bytes, read as from a full pipe,
// through a Pipeline into a k8s-file on the test's temporary directory:
// the monitor's hot path.
func benchPipeline(b *testing.B, lineLen int, opts k8sfile.Options, popts ...logging.PipelineOptions) {
	opts.Path = filepath.Join(b.TempDir(), "ctr.log")
	if opts.Fsync == "" {
		opts.Fsync = logging.FsyncNone
	}
	d, err := k8sfile.New(opts)
	if err != nil {
		b.Fatal(err)
	}
	var po logging.PipelineOptions
	if len(popts) > 0 {
		po = popts[0]
	}
	p := logging.NewPipeline(logging.Metadata{ID: "bench"}, []logging.Driver{d}, po)
	b.SetBytes(logging.DefaultReadSize)
	b.ReportAllocs()
	b.ResetTimer()
	p.ReadFrom(logging.Stdout, newChunks(lineLen, b.N))
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	st := p.Stats()
	b.ReportMetric(float64(st.Read.Lines)/float64(b.N), "records/op")
	if st.WriteError.Lines != 0 {
		b.Fatalf("write errors: %+v", st)
	}
	if st.BufferFull.Lines > 0 {
		b.ReportMetric(float64(st.BufferFull.Lines)/float64(st.Read.Lines)*100, "%dropped")
	}
}

func BenchmarkK8sFile80B(b *testing.B)   { benchPipeline(b, 80, k8sfile.Options{}) }
func BenchmarkK8sFile16KiB(b *testing.B) { benchPipeline(b, 16<<10, k8sfile.Options{}) }

// BenchmarkK8sFile80BRotating rotates every 10 MiB, keeping 3 files.
func BenchmarkK8sFile80BRotating(b *testing.B) {
	benchPipeline(b, 80, k8sfile.Options{MaxSize: 10 << 20, MaxFiles: 3})
}

// BenchmarkK8sFile80BNonBlocking goes through the non-blocking buffer
// (1 MiB): the reader never waits for the file; what it drops is reported.
func BenchmarkK8sFile80BNonBlocking(b *testing.B) {
	benchPipeline(b, 80, k8sfile.Options{}, logging.PipelineOptions{Mode: logging.NonBlocking})
}

// BenchmarkK8sFile80BFiltered adds a drop pattern and a redaction that
// match nothing: the cost of looking.
func BenchmarkK8sFile80BFiltered(b *testing.B) {
	benchPipeline(b, 80, k8sfile.Options{}, logging.PipelineOptions{
		Drop:   []*regexp.Regexp{regexp.MustCompile(`^healthz`)},
		Redact: []logging.Redaction{{Pattern: regexp.MustCompile(`password=\S+`), Replacement: []byte("***")}},
	})
}

// BenchmarkRawCopy is the limit: the same bytes copied to a file in reads
// of up to 64 KiB (a full pipe's), with no format at all.
func BenchmarkRawCopy(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "raw"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(logging.DefaultReadSize)
	b.ReportAllocs()
	buf := make([]byte, 128<<10)
	c := newChunks(80, b.N)
	for {
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		f.Write(buf[:n])
	}
}

// TestNoAllocationPerLine pins the hot path: a read of 102 lines through
// the pipeline into k8s-file allocates nothing once warm.
func TestNoAllocationPerLine(t *testing.T) {
	d, err := k8sfile.New(k8sfile.Options{Path: filepath.Join(t.TempDir(), "ctr.log"), Fsync: logging.FsyncNone})
	if err != nil {
		t.Fatal(err)
	}
	p := logging.NewPipeline(logging.Metadata{ID: "x"}, []logging.Driver{d}, logging.PipelineOptions{
		Now: func() time.Time { return time.Unix(1700000000, 123) },
	})
	defer p.Close()
	chunk := bytes.Repeat([]byte(strings.Repeat("y", 79)+"\n"), 102)
	p.WriteChunk(logging.Stdout, chunk)
	if n := testing.AllocsPerRun(100, func() { p.WriteChunk(logging.Stdout, chunk) }); n != 0 {
		t.Fatalf("%v allocations per read of 102 lines", n)
	}
}

// BenchmarkEncodeRead80B is the user-space part of the hot path alone: one
// 8 KiB read of 80-byte lines encoded into a warm batch buffer.
func BenchmarkEncodeRead80B(b *testing.B) {
	chunk := bytes.Repeat([]byte(strings.Repeat("z", 79)+"\n"), logging.DefaultReadSize/80)
	var d k8sfile.Driver
	tm := time.Unix(1700000000, 123456789)
	dst := make([]byte, 0, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		dst = d.EncodeRead(dst[:0], tm, logging.Stdout, chunk)
	}
}
