package logging_test

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"testing"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

// A file driver on a full disk holds what it could not write and sheds it
// past its bound: every record is then counted once, as lost, whatever
// path it took to the driver (a whole read, one record at a time, through
// the non-blocking buffer), never once as a failed write and again as lost.
func TestStatsHeldThenShedCountedOnce(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	const lines = 30000 // about 2 MiB encoded: more than the 1 MiB held
	for _, tc := range []struct {
		name string
		opts logging.PipelineOptions
	}{
		{"whole reads", logging.PipelineOptions{}},
		{"record by record", logging.PipelineOptions{Drop: []*regexp.Regexp{regexp.MustCompile("^never$")}}},
		{"non-blocking", logging.PipelineOptions{Mode: logging.NonBlocking}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := k8sfile.New(k8sfile.Options{Path: "/dev/full"})
			if err != nil {
				t.Fatal(err)
			}
			p := logging.NewPipeline(logging.Metadata{ID: "c"}, []logging.Driver{d}, tc.opts)
			var out bytes.Buffer
			for i := range lines {
				fmt.Fprintf(&out, "line %05d of the container's output\n", i)
			}
			p.ReadFrom(logging.Stdout, &out)
			if err := p.Close(); err == nil {
				t.Error("Close: no error on a full disk")
			}
			st := p.Stats()
			ds := st.Drivers[0]
			// Lines split across reads are two records; non-blocking mode
			// may drop some before the driver (BufferFull).
			handed := st.Written.Lines
			if handed < lines/2 || handed+st.BufferFull.Lines != st.Read.Lines {
				t.Fatalf("%d records read, %d handed to the driver, %d dropped by the buffer", st.Read.Lines, handed, st.BufferFull.Lines)
			}
			if ds.Errors.Lines+ds.Lost.Lines != handed || st.WriteError.Lines != handed {
				t.Errorf("%d records handed to the driver, %d failed + %d lost, write_error %d: want each counted once",
					handed, ds.Errors.Lines, ds.Lost.Lines, st.WriteError.Lines)
			}
			if ds.Failures == 0 || ds.LastError == "" {
				t.Errorf("failures %d, last error %q: the failing driver is not visible", ds.Failures, ds.LastError)
			}
		})
	}
}
