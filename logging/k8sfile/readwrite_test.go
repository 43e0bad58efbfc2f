package k8sfile_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

// encodeEach is what Encode gives for the records a pipeline cuts from one
// read: the reference EncodeRead must match.
func encodeEach(d *k8sfile.Driver, t time.Time, s logging.Stream, chunk []byte) []byte {
	var out []byte
	for len(chunk) > 0 {
		r := logging.Record{Time: t, Stream: s}
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			r.Line, chunk = chunk[:i], chunk[i+1:]
		} else {
			r.Line, r.Partial, chunk = chunk, true, nil
		}
		out = d.Encode(out, &r)
	}
	return out
}

// FuzzEncodeRead: encoding a whole read at once gives exactly the bytes of
// encoding its records one by one, after whatever the buffer held.
func FuzzEncodeRead(f *testing.F) {
	f.Add([]byte("a\nbb\n"), []byte("held\n"), int64(1), false)
	f.Add([]byte("tail without newline"), []byte(nil), int64(999999999), true)
	f.Add([]byte("\n\n\n"), []byte("x"), int64(0), false)
	f.Add([]byte("\x00\xff\r\n\rtail"), []byte(nil), int64(7), true)
	f.Add(bytes.Repeat([]byte("y"), 9000), []byte(nil), int64(5), false)
	f.Fuzz(func(t *testing.T, chunk, held []byte, ns int64, stderr bool) {
		if len(chunk) == 0 {
			return // a pipeline never hands over an empty read
		}
		s := logging.Stdout
		if stderr {
			s = logging.Stderr
		}
		tm := time.Unix(1700000000, ns%1e9)
		var a, b k8sfile.Driver
		want := encodeEach(&a, tm, s, chunk)
		got := b.EncodeRead(append([]byte(nil), held...), tm, s, chunk)
		if !bytes.HasPrefix(got, held) {
			t.Fatalf("the held bytes changed: %q", got)
		}
		if got = got[len(held):]; !bytes.Equal(got, want) {
			t.Fatalf("EncodeRead\n%q\nEncode per record\n%q", got, want)
		}
	})
}

// TestPipelineReadWriteMatchesRecords: the k8s-file a pipeline writes
// through WriteRead (whole reads) is byte for byte the file written record
// by record (the path a drop pattern forces), rotation included: a
// rotation falling inside a read cuts between the same entries.
func TestPipelineReadWriteMatchesRecords(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var data []byte
	for len(data) < 300<<10 {
		switch rng.IntN(4) {
		case 0:
			data = append(data, '\n')
		case 1:
			data = append(data, bytes.Repeat([]byte("L"), 10000+rng.IntN(10000))...)
		default:
			data = append(data, strings.Repeat("z", rng.IntN(200))+"\n"...)
		}
	}
	data = append(data, "no newline at the end"...)
	for _, tc := range []struct {
		name string
		opts k8sfile.Options
	}{
		{"plain", k8sfile.Options{}},
		{"rotating", k8sfile.Options{MaxSize: 20000, MaxFiles: 1000}},
		{"truncating", k8sfile.Options{MaxSize: 50000, MaxFiles: 1}},
		{"capped", k8sfile.Options{GlobalSizeMax: 100000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write := func(popts logging.PipelineOptions) (string, logging.Stats) {
				dir := t.TempDir()
				o := tc.opts
				o.Path = filepath.Join(dir, "ctr.log")
				o.Fsync = logging.FsyncNone
				d, err := k8sfile.New(o)
				if err != nil {
					t.Fatal(err)
				}
				n := 0
				popts.Now = func() time.Time { n++; return time.Unix(1700000000, int64(n)) }
				p := logging.NewPipeline(logging.Metadata{ID: "x"}, []logging.Driver{d}, popts)
				src := &fuzzReader{data: data, rng: rand.New(rand.NewPCG(3, 4)), max: 70000}
				p.ReadFrom(logging.Stdout, src)
				if err := p.Close(); err != nil {
					t.Fatal(err)
				}
				return dir, p.Stats()
			}
			direct, dst := write(logging.PipelineOptions{})
			perRecord, rst := write(logging.PipelineOptions{Drop: []*regexp.Regexp{regexp.MustCompile(`^never matches$`)}})
			if dst.Read != rst.Read || dst.Written != rst.Written {
				t.Fatalf("stats: whole reads %+v, per record %+v", dst, rst)
			}
			a, b := dirFiles(t, direct), dirFiles(t, perRecord)
			if len(a) != len(b) {
				t.Fatalf("%d files from whole reads, %d per record", len(a), len(b))
			}
			for name, content := range a {
				if !bytes.Equal(content, b[name]) {
					t.Fatalf("%s differs: %d bytes from whole reads, %d per record", name, len(content), len(b[name]))
				}
			}
		})
	}
}

func dirFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	m := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		m[n] = b
	}
	return m
}

// fuzzReader returns data in reads of random sizes up to max.
type fuzzReader struct {
	data []byte
	rng  *rand.Rand
	max  int
}

func (r *fuzzReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(r.data), 1+r.rng.IntN(r.max))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	return n, nil
}
