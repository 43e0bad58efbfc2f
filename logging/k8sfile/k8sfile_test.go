package k8sfile_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

func TestFormat(t *testing.T) {
	loc := time.FixedZone("x", 0)
	ts := time.Date(2026, 11, 28, 12, 0, 39, 739370731, loc)
	for _, tc := range []struct {
		name string
		loc  *time.Location
		rec  logging.Record
		want string
	}{
		{"full stdout", loc, logging.Record{Time: ts, Stream: logging.Stdout, Line: []byte("out")},
			"2026-11-28T12:00:39.739370731+00:00 stdout F out\n"},
		{"partial", loc, logging.Record{Time: ts, Stream: logging.Stdout, Line: []byte("partial"), Partial: true},
			"2026-11-28T12:00:39.739370731+00:00 stdout P partial\n"},
		{"stderr", loc, logging.Record{Time: ts, Stream: logging.Stderr, Line: []byte("err")},
			"2026-11-28T12:00:39.739370731+00:00 stderr F err\n"},
		{"negative offset, small ns", time.FixedZone("y", -(5*3600 + 30*60)),
			logging.Record{Time: time.Date(2026, 1, 2, 3, 4, 5, 7, time.UTC), Stream: logging.Stdout, Line: []byte("")},
			"2026-01-01T21:34:05.000000007-05:30 stdout F \n"},
		{"positive offset", time.FixedZone("z", 3600),
			logging.Record{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Stream: logging.Stdout, Line: []byte("\r")},
			"2026-01-02T04:04:05.000000000+01:00 stdout F \r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := k8sfile.TimeCache{Loc: tc.loc}
			var d k8sfile.Driver
			_ = d
			got := string(append(c.Append(nil, tc.rec.Time), formatRest(&tc.rec)...))
			if got != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func formatRest(r *logging.Record) string {
	s := " stdout "
	if r.Stream == logging.Stderr {
		s = " stderr "
	}
	if r.Partial {
		s += "P "
	} else {
		s += "F "
	}
	return s + string(r.Line) + "\n"
}

func TestDriverWrites(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ctr.log")
	d, err := k8sfile.New(k8sfile.Options{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2026, 11, 28, 12, 0, 39, 1, time.Local)
	for _, r := range []logging.Record{
		{Time: ts, Stream: logging.Stdout, Line: []byte("a")},
		{Time: ts, Stream: logging.Stderr, Line: []byte("b"), Partial: true},
	} {
		if err := d.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	pre := ts.Format("2006-01-02T15:04:05.000000000-07:00")
	want := pre + " stdout F a\n" + pre + " stderr P b\n"
	if string(data) != want {
		t.Fatalf("got %q\nwant %q", data, want)
	}
}
