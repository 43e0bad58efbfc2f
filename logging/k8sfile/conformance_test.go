package k8sfile_test

import (
	"path/filepath"
	"testing"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/k8sfile"
	"github.com/containers/conmon-v2/logging/loggingtest"
)

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts k8sfile.Options
	}{
		{"plain", k8sfile.Options{}},
		{"rotating", k8sfile.Options{MaxSize: 4096, MaxFiles: 1000}},
		{"rotating-compressed", k8sfile.Options{MaxSize: 4096, MaxFiles: 1000, Compress: true}},
		{"fsync-interval", k8sfile.Options{Fsync: logging.FsyncInterval}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
				o := tc.opts
				o.Path = filepath.Join(t.TempDir(), "ctr.log")
				d, err := k8sfile.New(o)
				if err != nil {
					t.Fatal(err)
				}
				return d, func() []logging.Record { return loggingtest.ReadBack(t, d.LogSource()) }
			}, loggingtest.Options{ExactTime: true})
		})
	}
}
