package conmon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
)

// EnvConfig names the configuration file whose [logging] table the drop-in
// reads (the shim's file and table); unset: logging.DefaultConfigPath, which
// may be missing. conmon has no such flag, and Podman passes no variable of
// its own to the monitor, so this is for tests and hand-run monitors.
const EnvConfig = "CONMON_V2_CONFIG"

// envLogAnnotations carries the container's log annotations, as JSON,
// from the first process (which read the bundle's config.json) to the
// monitor, so that the monitor does not decode the OCI spec again.
const envLogAnnotations = "_CONMON_V2_LOG_ANNOTATIONS"

// LogSettings is the container's logging configuration: the [logging]
// table of the configuration file, then the bundle's
// io.containers.conmon-v2.log.* annotations (Podman: --annotation), then
// the command line, which wins:
//
//   - Drivers: those of -l, in order, then the drivers the annotation
//     "driver" names (or, without one, the file's "drivers", if the file
//     names any) that -l does not already give.
//   - A driver given by -l keeps what the flags say (its path or address,
//     --log-size-max with --log-rotate/--log-max-files, --log-global-size-max,
//     --no-sync-log); the file's and annotations' options fill in the rest
//     (e.g. max-size and max-files: rotation of Podman's k8s-file).
//   - --log-tag replaces the tag option; --log-label wins over label.<key>.
//   - Pipeline options (mode, rate limits, drop, redact) apply to the
//     container's whole output.
//   - The local cache (dual logging) is off: Podman and CRI-O read the log
//     they asked for with -l.
//
// Exec sessions and passthrough use the command line only.
type LogSettings struct {
	lc   logging.Config
	meta logging.Metadata
	// Annotations are the bundle's annotations under logging.AnnotationPrefix.
	Annotations map[string]string
}

// ReadLogSettings reads the configuration file and the bundle's annotations
// (the first process) and resolves them with the command line. An error
// names the file, the annotation or the option.
func ReadLogSettings(c *Config) (*LogSettings, error) {
	var ann map[string]string
	if usesLogConfig(c) {
		var err error
		if ann, err = readLogAnnotations(filepath.Join(c.Bundle, "config.json")); err != nil {
			return nil, err
		}
	}
	return resolveLogSettings(c, ann)
}

// MonitorLogSettings resolves the settings in the detached monitor, from
// the annotations the first process passed on.
func MonitorLogSettings(c *Config) (*LogSettings, error) {
	var ann map[string]string
	if v := os.Getenv(envLogAnnotations); v != "" && usesLogConfig(c) {
		if err := json.Unmarshal([]byte(v), &ann); err != nil {
			return nil, fmt.Errorf("%s: %v", envLogAnnotations, err)
		}
	}
	return resolveLogSettings(c, ann)
}

// env returns the variable that passes s on to the monitor, or "".
func (s *LogSettings) env() string {
	if s == nil || len(s.Annotations) == 0 {
		return ""
	}
	b, err := json.Marshal(s.Annotations)
	if err != nil {
		return ""
	}
	return envLogAnnotations + "=" + string(b)
}

func usesLogConfig(c *Config) bool { return !c.Exec && !c.Passthru }

// readLogAnnotations returns the annotations of an OCI spec under
// logging.AnnotationPrefix. A missing spec has none.
func readLogAnnotations(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read annotations: %w", err)
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("read annotations of %s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	var out map[string]string
	for k, v := range spec.Annotations {
		if strings.HasPrefix(k, logging.AnnotationPrefix) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out, nil
}

// loadLogConfig reads the [logging] table of the configuration file and
// whether it names drivers.
func loadLogConfig() (logging.Config, bool, error) {
	path, explicit := os.LookupEnv(EnvConfig)
	if !explicit || path == "" {
		path = logging.DefaultConfigPath
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return logging.DefaultConfig(), false, nil
	}
	if err != nil {
		return logging.DefaultConfig(), false, fmt.Errorf("configuration file %s (%s): %w", path, EnvConfig, err)
	}
	lc, err := logging.ParseConfig(data)
	if err != nil {
		return lc, false, fmt.Errorf("%s: %w", path, err)
	}
	var doc struct {
		Logging map[string]toml.Primitive `toml:"logging"`
	}
	_, _ = toml.Decode(string(data), &doc)
	_, d1 := doc.Logging["driver"]
	_, d2 := doc.Logging["drivers"]
	return lc, d1 || d2, nil
}

func resolveLogSettings(c *Config, ann map[string]string) (*LogSettings, error) {
	s := &LogSettings{Annotations: ann}
	lc := logging.DefaultConfig()
	var extra []string
	if usesLogConfig(c) {
		var fileDrivers bool
		var err error
		if lc, fileDrivers, err = loadLogConfig(); err != nil {
			return nil, err
		}
		if fileDrivers {
			extra = lc.Drivers
		}
		if err := lc.ApplyAnnotations(ann); err != nil {
			return nil, err
		}
		for _, k := range []string{"driver", "drivers"} {
			if _, ok := ann[logging.AnnotationPrefix+k]; ok {
				extra = lc.Drivers
			}
		}
	}
	meta, err := LogMetadata(c)
	if err != nil {
		return nil, err
	}
	flagDrivers, err := LogDrivers(c)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, d := range flagDrivers {
		names = append(names, d.Name)
		for _, k := range slices.Sorted(maps.Keys(d.Options)) {
			if err := lc.Set("opt."+d.Name+"."+k, d.Options[k]); err != nil {
				return nil, err
			}
		}
	}
	for _, n := range extra {
		if n == DriverPassthrough {
			return nil, fmt.Errorf("log driver passthrough cannot be added by the configuration or an annotation (it is Podman's --log-driver): %w", errdefs.ErrInvalidArgument)
		}
		if !slices.ContainsFunc(names, func(m string) bool { return canonDriver(m) == canonDriver(n) }) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		// -l none or passthrough only: the pipeline still reads the
		// output for the attach clients and discards it.
		names = []string{DriverNone}
	}
	lc.Drivers = names
	if c.LogTag != "" {
		lc.Tag = ""
	}
	for _, k := range slices.Sorted(maps.Keys(meta.Labels)) {
		if err := lc.Set("label."+k, meta.Labels[k]); err != nil {
			return nil, err
		}
	}
	lc.Cache = false
	if _, err := lc.PipelineOptions(); err != nil {
		return nil, err
	}
	s.lc, s.meta = lc, meta
	return s, nil
}

func canonDriver(n string) string {
	switch n {
	case "off", "null":
		return DriverNone
	}
	return n
}

// Drivers lists the log drivers the container gets, in order.
func (s *LogSettings) Drivers() []string { return slices.Clone(s.lc.Drivers) }

// MissingDrivers lists the drivers s needs that reg does not have.
func (s *LogSettings) MissingDrivers(reg *logging.Registry) []string {
	var out []string
	for _, n := range s.lc.Drivers {
		if _, ok := reg.Resolve(n); !ok {
			out = append(out, n)
		}
	}
	return out
}

// CheckLogFiles opens and closes the file drivers (k8s-file, json-file)
// of s, so that a bad log path fails before the monitor detaches, as
// conmon opens its log file first. Drivers that connect somewhere or start
// programs are only opened by the monitor itself.
func CheckLogFiles(ctx context.Context, c *Config, s *LogSettings, reg *logging.Registry) error {
	lc := s.lc
	lc.Drivers = nil
	lc.DriverOptions = map[string]map[string]string{}
	for _, n := range s.lc.Drivers {
		if n == DriverK8sFile || n == DriverJSONFile {
			lc.Drivers = append(lc.Drivers, n)
			if o, ok := s.lc.DriverOptions[n]; ok {
				lc.DriverOptions[n] = o
			}
		}
	}
	if len(lc.Drivers) == 0 {
		return nil
	}
	lc.Tag = ""
	lc.Drop, lc.Redact = nil, nil
	p, err := lc.Open(ctx, reg, s.meta, c.Bundle)
	if err != nil {
		return err
	}
	return p.Close()
}

// OpenLogs builds the container's log pipeline from s through reg; tap
// (may be nil) gets every chunk read, before the drivers.
func OpenLogs(ctx context.Context, c *Config, s *LogSettings, reg *logging.Registry, tap func(logging.Stream, []byte)) (*logging.Pipeline, error) {
	lc := s.lc
	lc.Tap = tap
	return lc.Open(ctx, reg, s.meta, c.Bundle)
}
