package jsonfile_test

import (
	"path/filepath"
	"testing"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/loggingtest"
)

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts jsonfile.Options
	}{
		{"plain", jsonfile.Options{}},
		{"rotating-compressed", jsonfile.Options{MaxSize: 4096, MaxFiles: 1000, Compress: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
				o := tc.opts
				o.Path = filepath.Join(t.TempDir(), "ctr.json.log")
				d, err := jsonfile.New(o)
				if err != nil {
					t.Fatal(err)
				}
				return d, func() []logging.Record { return loggingtest.ReadBack(t, d.LogSource()) }
			}, loggingtest.Options{ExactTime: true})
		})
	}
}
