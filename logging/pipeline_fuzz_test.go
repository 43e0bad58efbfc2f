package logging_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
)

// fuzzReader returns data in reads of pseudo-random sizes.
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

// FuzzPipelineFraming: whatever a container writes (binary data, no
// newline, lines longer than a read), in whatever reads, the records of a
// blocking Pipeline give back exactly those bytes (line + "\n" for a full
// record, line alone for a partial one), no record is longer than a read,
// and the stats count every byte.
func FuzzPipelineFraming(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), uint16(3), uint16(8192), int64(1))
	f.Add([]byte("no newline"), uint16(1), uint16(16), int64(2))
	f.Add([]byte("\x00\xff\xfe\n\r\n\n"), uint16(2), uint16(1), int64(3))
	f.Add(bytes.Repeat([]byte("x"), 100000), uint16(65535), uint16(8192), int64(4))
	f.Add(bytes.Repeat([]byte("ab\n"), 3000), uint16(7), uint16(100), int64(5))
	f.Fuzz(func(t *testing.T, data []byte, maxRead, readSize uint16, seed int64) {
		rs := int(readSize)
		if rs == 0 {
			rs = logging.DefaultReadSize
		}
		d := &memDriver{}
		p := logging.NewPipeline(logging.Metadata{ID: "fuzz"}, []logging.Driver{d}, logging.PipelineOptions{ReadSize: rs})
		p.ReadFrom(logging.Stdout, &fuzzReader{data: data, rng: rand.New(rand.NewPCG(uint64(seed), 2)), max: int(maxRead) + 1})
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		var got []byte
		for _, r := range d.recs {
			if len(r.Line) > rs {
				t.Fatalf("record of %d bytes from reads of %d", len(r.Line), rs)
			}
			if r.Stream != logging.Stdout || r.Meta == nil {
				t.Fatalf("record %+v", r)
			}
			got = append(got, r.Line...)
			if !r.Partial {
				got = append(got, '\n')
			}
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("reconstructed %d bytes, wrote %d", len(got), len(data))
		}
		st := p.Stats()
		if want := uint64(len(data) - bytes.Count(data, []byte("\n"))); st.Read.Bytes != want || st.Written.Bytes != want {
			t.Fatalf("stats read %d written %d bytes, want %d", st.Read.Bytes, st.Written.Bytes, want)
		}
	})
}

// FuzzAnnotations: container annotations (one "key=value" per line, the
// prefix added to keys that lack it) configure logging without a panic;
// a refusal is an InvalidArgument; an accepted configuration compiles to
// pipeline options and its tag expands (or is refused as invalid).
func FuzzAnnotations(f *testing.F) {
	for _, s := range []string{
		"driver=k8s-file,journald\nmax-size=10m\nmax-files=3",
		"mode=non-blocking\nmax-buffer-size=1MiB\nrate-bytes=1k\nrate-lines=10\nrate-burst=2s",
		"redact.pw=password=\\S+\nredact-replacement.pw=***\ndrop=^DEBUG",
		"redact-replacement.x=y",
		"tag={{.Name}}/{{.ID}}\nlabel.a=b",
		"tag={{range .Labels}}{{.}}{{end}}",
		"tag={{.Nope}}",
		"opt.journald.x=y\nfsync=interval\nfsync-interval=-1s",
		"max-size=1e400\ncache=true\ncache-max-files=0",
		"drop=(((((((((a*)*)*)*)*)*)*)*)*)",
		"io.kubernetes.cri.container-name=web",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ann := map[string]string{}
		for _, l := range strings.Split(text, "\n") {
			k, v, _ := strings.Cut(l, "=")
			if !strings.Contains(k, ".kubernetes.") {
				k = logging.AnnotationPrefix + k
			}
			ann[k] = v
		}
		c := logging.DefaultConfig()
		if err := c.ApplyAnnotations(ann); err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ApplyAnnotations: %v is not InvalidArgument", err)
			}
			return
		}
		checkConfig(t, c)
	})
}

func checkConfig(t *testing.T, c logging.Config) {
	t.Helper()
	if _, err := c.PipelineOptions(); err != nil {
		t.Fatalf("accepted configuration does not compile: %v", err)
	}
	if c.Tag != "" {
		s, err := logging.ExpandTag(c.Tag, logging.Metadata{ID: "0123456789abcdef", Name: "n", Namespace: "ns", Labels: map[string]string{"a": "b"}})
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("ExpandTag: %v is not InvalidArgument", err)
		}
		if len(s) > 1<<20 {
			t.Fatalf("tag %q expands to %d bytes", c.Tag, len(s))
		}
	}
}

// FuzzParseConfig: the [logging] table of the TOML configuration file.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"[logging]\ndriver = [\"k8s-file\", \"journald\"]\nmax-size = \"10m\"\n",
		"[logging]\nlabels = { a = \"b\" }\nredact = [{ pattern = \"pw=\\\\S+\", replacement = \"*\" }, \"x\"]\n",
		"[logging.driver.journald]\nx = 1\n[logging.opt.syslog]\ny = true\n",
		"[logging]\nrate-burst = 1.5\nfsync-interval = 2023-01-01T00:00:00Z\n",
		"[logging]\nmode = [1]\n",
		"[logging]\ndrop = [\"a\", 1, {}]\n",
		"logging = 3\n",
		"[[logging]]\n",
		"[logging]\nredact = [[1]]\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		c, err := logging.ParseConfig([]byte(text))
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseConfig: %v is not InvalidArgument", err)
			}
			return
		}
		checkConfig(t, c)
	})
}

// FuzzParseLogLine: the readers of k8s-file and json-file lines (conmonctl
// logs, the Monitor API's log reads) never panic on a damaged file, and a
// line they accept has a stream.
func FuzzParseLogLine(f *testing.F) {
	for _, s := range []string{
		"2024-01-02T03:04:05.123456789Z stdout F hello",
		"2024-01-02T03:04:05.123456789+01:00 stderr P part",
		"2024-01-02T03:04:05Z stdout X",
		"garbage",
		`{"log":"hello\n","stream":"stdout","time":"2024-01-02T03:04:05.123456789Z"}`,
		`{"log":"\ud800","stream":"stderr","time":"bad"}`,
		`{"log":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var rec logging.Record
		if logging.ParseK8sLine(line, &rec) && rec.Stream != logging.Stdout && rec.Stream != logging.Stderr {
			t.Fatalf("k8s line %q: stream %v", line, rec.Stream)
		}
		rec = logging.Record{}
		if logging.ParseJSONLine(line, &rec) && rec.Stream != logging.Stdout && rec.Stream != logging.Stderr {
			t.Fatalf("json line %q: stream %v", line, rec.Stream)
		}
	})
}
