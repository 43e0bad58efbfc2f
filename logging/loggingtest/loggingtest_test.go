package loggingtest

import (
	"sync"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
)

// memDriver is a correct in-memory driver; the flags make it wrong in the
// ways the suite must catch.
type memDriver struct {
	mu       sync.Mutex
	recs     []logging.Record
	keepLine bool // keeps r.Line instead of copying it
	dropLast bool // loses the last record
	stripNL  bool // loses partial flags (joins pieces into lines wrongly)
}

func (m *memDriver) Write(r *logging.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := *r
	if !m.keepLine {
		c.Line = append([]byte(nil), r.Line...)
	}
	if m.stripNL {
		c.Partial = false
	}
	m.recs = append(m.recs, c)
	return nil
}
func (m *memDriver) Reopen() error { return nil }
func (m *memDriver) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dropLast && len(m.recs) > 0 {
		m.recs = m.recs[:len(m.recs)-1]
	}
	return nil
}
func (m *memDriver) result() []logging.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]logging.Record(nil), m.recs...)
}

func TestSuitePassesACorrectDriver(t *testing.T) {
	Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		m := &memDriver{}
		return m, m.result
	}, Options{ExactTime: true})
}

// TestSuiteCatchesBrokenDrivers runs each case against broken drivers and
// checks that the comparison the suite makes fails where it must.
func TestSuiteCatchesBrokenDrivers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		driver *memDriver
		cases  []string
	}{
		{"keeps Line", &memDriver{keepLine: true}, []string{"line-not-kept"}},
		{"loses a record", &memDriver{dropLast: true}, []string{"lines", "both-streams", "partial-then-full", "concurrent", "reopen", "sync"}},
		{"loses partial flags", &memDriver{stripNL: true}, []string{"partial-then-full"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range cases(Options{}) {
				want := false
				for _, n := range tc.cases {
					want = want || n == c.name
				}
				if !want {
					continue
				}
				d := &memDriver{keepLine: tc.driver.keepLine, dropLast: tc.driver.dropLast, stripNL: tc.driver.stripNL}
				recs := c.run(t, d)
				d.Close()
				if diff := compare(recs, d.result()); diff == "" {
					t.Errorf("case %s did not catch a driver that %s", c.name, tc.name)
				}
			}
		})
	}
}

func TestCompareTimes(t *testing.T) {
	now := time.Now()
	w := []logging.Record{{Time: now, Stream: logging.Stdout, Line: []byte("a")}}
	g := []logging.Record{{Time: now.Add(time.Second), Stream: logging.Stdout, Line: []byte("a")}}
	if compareTimes(w, g) == "" {
		t.Fatal("a time one second off passed")
	}
	if compareTimes(w, w) != "" {
		t.Fatal("equal times failed")
	}
}
