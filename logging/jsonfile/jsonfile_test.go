package jsonfile_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/jsonfile"
)

// TestEscapingMatchesEncodingJSON: the hand-written escaper gives the bytes
// encoding/json gives (which is what Docker's json-file holds).
func TestEscapingMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{
		"", "plain", `quote " backslash \ slash /`, "<html> & </html>", "tab\tnl\ncr\rbs\bff\f",
		"\x00\x01\x1f\x7f", "héllo ✓ 日本語", "\u2028\u2029", "bad utf8 \xff\xfe end", "\xe2\x82", "emoji 😀",
	} {
		want, _ := json.Marshal(s)
		got := `"` + string(jsonfile.AppendEscaped(nil, []byte(s))) + `"`
		if got != string(want) {
			t.Errorf("%q: got %s want %s", s, got, want)
		}
	}
}

func TestLineFormat(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ctr.json.log")
	d, err := jsonfile.New(jsonfile.Options{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	loc := time.FixedZone("x", 3600)
	for _, r := range []logging.Record{
		{Time: time.Date(2026, 11, 28, 13, 0, 39, 739370731, loc), Stream: logging.Stdout, Line: []byte("full")},
		{Time: time.Date(2026, 11, 28, 13, 0, 39, 500000000, loc), Stream: logging.Stderr, Line: []byte("part"), Partial: true},
		{Time: time.Date(2026, 11, 28, 13, 0, 40, 0, loc), Stream: logging.Stdout, Line: []byte(`"q"`)},
	} {
		d.Write(&r)
	}
	d.Close()
	data, _ := os.ReadFile(p)
	want := `{"log":"full\n","stream":"stdout","time":"2026-11-28T12:00:39.739370731Z"}
{"log":"part","stream":"stderr","time":"2026-11-28T12:00:39.5Z"}
{"log":"\"q\"\n","stream":"stdout","time":"2026-11-28T12:00:40Z"}
`
	if string(data) != want {
		t.Fatalf("got\n%s\nwant\n%s", data, want)
	}
	// And the time is exactly what time.RFC3339Nano gives in UTC.
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var e struct{ Time string }
		json.Unmarshal([]byte(l), &e)
		tm, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil || tm.UTC().Format(time.RFC3339Nano) != e.Time {
			t.Fatalf("time %q", e.Time)
		}
	}
}

func TestAttrs(t *testing.T) {
	dir := t.TempDir()
	d, err := jsonfile.Factory(t.Context(), logging.Info{
		Meta:    logging.Metadata{Labels: map[string]string{"team": "core", "app": "w<e>b"}},
		Options: map[string]string{"attrs": "true"},
		Dir:     dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := logging.Record{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Stream: logging.Stdout, Line: []byte("x")}
	d.Write(&r)
	d.Close()
	data, _ := os.ReadFile(filepath.Join(dir, "ctr.json.log"))
	want := `{"log":"x\n","stream":"stdout","attrs":{"app":"w\u003ce\u003eb","team":"core"},"time":"2026-01-02T03:04:05Z"}` + "\n"
	if string(data) != want {
		t.Fatalf("got  %s\nwant %s", data, want)
	}
	var rec logging.Record
	if !logging.ParseJSONLine(data[:len(data)-1], &rec) || string(rec.Line) != "x" {
		t.Fatal("reader cannot parse a line with attrs")
	}
	if _, err := jsonfile.Factory(t.Context(), logging.Info{Options: map[string]string{"attrs": "maybe"}, Dir: dir}); err == nil {
		t.Fatal("bad attrs accepted")
	}
}
