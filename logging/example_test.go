package logging_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/builtin"
)

// A front end builds a container's logs from the global configuration and
// the container's annotations, feeds the pipeline, and reads the log back.
func Example() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)

	cfg, err := logging.ParseConfig([]byte(`
[logging]
max-size = "10MiB"
redact = [{pattern = "password=\\S+", replacement = "password=***"}]
`))
	if err != nil {
		panic(err)
	}
	err = cfg.ApplyAnnotations(map[string]string{
		"io.containers.conmon-v2.log.drop": "^healthz",
	})
	if err != nil {
		panic(err)
	}
	p, err := cfg.Open(context.Background(), builtin.Registry(), logging.Metadata{ID: "0123456789abcdef", Name: "web"}, dir)
	if err != nil {
		panic(err)
	}
	// A monitor calls p.ReadFrom(logging.Stdout, pipe) instead.
	p.WriteChunk(logging.Stdout, []byte("healthz ok\nlogin password=hunter2\nprompt> "))
	if err := p.Close(); err != nil {
		panic(err)
	}

	src, _ := p.Source()
	fmt.Println(filepath.Base(src.Path), src.Format)
	logging.ReadLogs(context.Background(), logging.ReadOptions{Source: src, Tail: logging.TailAll}, func(r *logging.Record) error {
		fmt.Printf("%s partial=%v %q\n", r.Stream, r.Partial, r.Line)
		return nil
	})
	st := p.Stats()
	fmt.Println("filtered", st.Filtered.Lines, "redacted", st.Redacted)
	// Output:
	// ctr.log k8s-file
	// stdout partial=false "login password=***"
	// stdout partial=true "prompt> "
	// filtered 1 redacted 1
}

// Bad configuration names the option.
func ExampleConfig_Set() {
	cfg := logging.DefaultConfig()
	err := cfg.ApplyAnnotations(map[string]string{"io.containers.conmon-v2.log.mode": "fast"})
	fmt.Println(strings.Replace(err.Error(), "\"", "'", -1))
	// Output:
	// annotation io.containers.conmon-v2.log.mode: log option mode='fast': want blocking or non-blocking: invalid argument
}
