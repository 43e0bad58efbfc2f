package logging_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

// roundTrip writes chunks through a Pipeline into a file driver, reads the
// log back with ReadLogs and returns each stream's bytes.
func roundTrip(t *testing.T, format string, maxSize int64, chunks [][]byte, streams []logging.Stream) map[logging.Stream][]byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctr.log")
	var d logging.Driver
	var err error
	if format == logging.FormatK8sFile {
		d, err = k8sfile.New(k8sfile.Options{Path: path, MaxSize: maxSize, MaxFiles: 1 << 20})
	} else {
		d, err = jsonfile.New(jsonfile.Options{Path: path, MaxSize: maxSize, MaxFiles: 1 << 20})
	}
	if err != nil {
		t.Fatal(err)
	}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{d}, logging.PipelineOptions{})
	for i, c := range chunks {
		p.WriteChunk(streams[i], c)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	out := map[logging.Stream][]byte{}
	err = logging.ReadLogs(context.Background(), logging.ReadOptions{Source: logging.Source{Path: path, Format: format}, Tail: logging.TailAll},
		func(r *logging.Record) error {
			out[r.Stream] = append(out[r.Stream], r.Line...)
			if !r.Partial {
				out[r.Stream] = append(out[r.Stream], '\n')
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// FuzzRoundTrip: whatever bytes a container writes, in whatever reads, the
// log read back holds exactly those bytes per stream (k8s-file and
// json-file, rotating). Invalid UTF-8 in a read is the one exception for
// json-file, whose format replaces it.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), uint8(3), int64(1))
	f.Add([]byte("no newline"), uint8(1), int64(2))
	f.Add([]byte("\n\n\r\n\t\"\\<>&"), uint8(2), int64(3))
	f.Add(bytes.Repeat([]byte("long line "), 3000), uint8(7), int64(4))
	f.Fuzz(func(t *testing.T, data []byte, cuts uint8, seed int64) {
		if len(data) > 64<<10 {
			// Numbered rotation costs O(files) renames per rotation: keep
			// the file count (data / 2 KiB) small.
			t.Skip()
		}
		rng := rand.New(rand.NewPCG(uint64(seed), 1))
		var chunks [][]byte
		var streams []logging.Stream
		want := map[logging.Stream][]byte{}
		rest := data
		for len(rest) > 0 {
			// At most about 200 reads, so that the file count stays small.
			n := min(len(rest), max(len(data)/200, 1+rng.IntN(max(1, len(data)/int(cuts|1)))), logging.DefaultReadSize)
			s := logging.Stream(1 + rng.IntN(2))
			chunks, streams = append(chunks, rest[:n]), append(streams, s)
			want[s] = append(want[s], rest[:n]...)
			rest = rest[n:]
		}
		got := roundTrip(t, logging.FormatK8sFile, 2048, chunks, streams)
		for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
			if !bytes.Equal(got[s], want[s]) {
				t.Fatalf("k8s-file %s: got %q want %q", s, got[s], want[s])
			}
		}
		for _, c := range chunks {
			if !utf8.Valid(c) {
				// json-file strings are UTF-8: Docker's format replaces
				// invalid bytes (also a character split across reads).
				return
			}
		}
		got = roundTrip(t, logging.FormatJSONFile, 2048, chunks, streams)
		for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
			if !bytes.Equal(got[s], want[s]) {
				t.Fatalf("json-file %s: got %q want %q", s, got[s], want[s])
			}
		}
	})
}

// TestRoundTripRandom runs the round trip on random output (the fuzz
// target's seeds run too, but random bytes cover more).
func TestRoundTripRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 42))
	for range 20 {
		data := make([]byte, rng.IntN(50000))
		for i := range data {
			if rng.IntN(20) == 0 {
				data[i] = '\n'
			} else {
				data[i] = byte(rng.IntN(256))
			}
		}
		var chunks [][]byte
		var streams []logging.Stream
		want := map[logging.Stream][]byte{}
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(logging.DefaultReadSize))
			s := logging.Stream(1 + rng.IntN(2))
			chunks, streams = append(chunks, rest[:n]), append(streams, s)
			want[s] = append(want[s], rest[:n]...)
			rest = rest[n:]
		}
		got := roundTrip(t, logging.FormatK8sFile, 4096, chunks, streams)
		for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
			if !bytes.Equal(got[s], want[s]) {
				t.Fatalf("%s: %d bytes back, %d written", s, len(got[s]), len(want[s]))
			}
		}
	}
}
