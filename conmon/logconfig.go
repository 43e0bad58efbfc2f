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
	"strconv"
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
//   - annotation-allow: the file's, else the default ("*": Podman's users
//     can run podman as root anyway), except for a Kubernetes container
//     (an io.kubernetes.* annotation, as CRI-O sets, and no
//     io.container.manager=libpod, which Podman sets), whose annotations
//     may then name no host file, socket or address.
//
// Exec sessions and passthrough use the command line only.
type LogSettings struct {
	lc      logging.Config // the file and annotations, pipeline part
	meta    logging.Metadata
	drivers []LogDriver // every driver with its options, in order
	// Annotations are the bundle's annotations under
	// logging.AnnotationPrefix, one io.kubernetes.* annotation if the
	// bundle has any, and io.container.manager.
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
	if s == nil || !slices.ContainsFunc(slices.Collect(maps.Keys(s.Annotations)), func(k string) bool {
		return strings.HasPrefix(k, logging.AnnotationPrefix)
	}) {
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
	kube := false
	for k, v := range spec.Annotations {
		// One Kubernetes annotation and Podman's manager annotation are
		// kept as the evidence of who set the annotations (see
		// logging.FromKubernetes).
		if strings.HasPrefix(k, logging.AnnotationPrefix) || k == logging.ManagerAnnotation ||
			!kube && strings.HasPrefix(k, logging.KubernetesAnnotationPrefix) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
			kube = kube || strings.HasPrefix(k, logging.KubernetesAnnotationPrefix)
		}
	}
	return out, nil
}

// loadLogConfig reads the [logging] table of the configuration file and
// whether it names drivers.
func loadLogConfig() (lc logging.Config, drivers bool, err error) {
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
	if lc, err = logging.ParseConfig(data); err != nil {
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
		// Unless the file sets annotation-allow, a Kubernetes container's
		// annotations may name no host file, socket or address
		// (logging.Config.AnnotationAllow, docs/logging.md "Annotations
		// and trust").
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
	drivers := flagDrivers
	for _, n := range extra {
		if !knownDriver(n) {
			return nil, fmt.Errorf("log option driver: no such log driver %q (known: k8s-file, json-file, journald, syslog, fluentd, binary, plugin, none): %w", n, errdefs.ErrInvalidArgument)
		}
		if canonDriver(n) == DriverPassthrough {
			return nil, fmt.Errorf("log driver passthrough cannot be added by the configuration or an annotation (it is Podman's --log-driver): %w", errdefs.ErrInvalidArgument)
		}
		if !slices.ContainsFunc(drivers, func(d LogDriver) bool { return canonDriver(d.Name) == canonDriver(n) }) {
			drivers = append(drivers, LogDriver{Name: n})
		}
	}
	if len(drivers) == 0 {
		// -l none or passthrough only: the pipeline still reads the
		// output for the attach clients and discards it.
		drivers = []LogDriver{{Name: DriverNone}}
	}
	for d := range lc.DriverOptions {
		if !slices.ContainsFunc(drivers, func(x LogDriver) bool { return canonDriver(x.Name) == canonDriver(d) }) {
			return nil, fmt.Errorf("log option opt.%s: driver %q is not enabled: %w", d, d, errdefs.ErrInvalidArgument)
		}
	}
	// Each driver: the common options, its opt.<driver>.* options, then
	// what the flags say for it (a driver given twice by -l, such as two
	// plugins, is two drivers with their own flag options).
	common := commonLogOptions(&lc)
	for i, d := range drivers {
		opts := maps.Clone(common)
		if d.Name != DriverK8sFile && d.Name != DriverJSONFile {
			// The common path names a log file; other drivers take
			// theirs from opt.<driver>.path.
			delete(opts, logging.OptPath)
		}
		maps.Copy(opts, lc.DriverOptions[d.Name])
		maps.Copy(opts, d.Options)
		drivers[i].Options = opts
	}
	if c.LogTag != "" {
		lc.Tag = ""
	}
	if lc.Tag != "" {
		if meta.Tag, err = logging.ExpandTag(lc.Tag, meta); err != nil {
			return nil, err
		}
	}
	if len(lc.Labels) > 0 {
		labels := maps.Clone(lc.Labels)
		maps.Copy(labels, meta.Labels) // --log-label wins
		meta.Labels = labels
	}
	if _, err := lc.PipelineOptions(); err != nil {
		return nil, err
	}
	s.lc, s.meta, s.drivers = lc, meta, drivers
	return s, nil
}

// commonLogOptions are the options of lc that reach every driver.
func commonLogOptions(lc *logging.Config) map[string]string {
	o := map[string]string{}
	set := func(k, v string, ok bool) {
		if ok {
			o[k] = v
		}
	}
	set(logging.OptPath, lc.Path, lc.Path != "")
	set(logging.OptMaxSize, strconv.FormatInt(lc.MaxSize, 10), lc.MaxSize > 0)
	set(logging.OptMaxFiles, strconv.Itoa(lc.MaxFiles), lc.MaxFiles > 0)
	set(logging.OptCompress, "true", lc.Compress)
	set(logging.OptTruncate, "true", lc.Truncate)
	set(logging.OptFsync, lc.Fsync, lc.Fsync != "")
	set(logging.OptFsyncInterval, lc.FsyncInterval.String(), lc.FsyncInterval > 0)
	set(logging.OptGlobalSizeMax, strconv.FormatInt(lc.GlobalSizeMax, 10), lc.GlobalSizeMax > 0)
	return o
}

// knownDriver reports whether n names a driver of conmon-v2-full.
func knownDriver(n string) bool {
	switch canonDriver(n) {
	case DriverK8sFile, DriverJSONFile, DriverJournald, DriverPassthrough, DriverNone,
		DriverSyslog, DriverFluentd, DriverBinary, DriverPlugin:
		return true
	}
	return false
}

func canonDriver(n string) string {
	switch n {
	case "off", "null":
		return DriverNone
	}
	return n
}

// Drivers lists the log drivers the container gets, in order, with their
// options.
func (s *LogSettings) Drivers() []LogDriver { return slices.Clone(s.drivers) }

// MissingDrivers lists the drivers s needs that reg does not have.
func (s *LogSettings) MissingDrivers(reg *logging.Registry) []string {
	var out []string
	for _, d := range s.drivers {
		if _, ok := reg.Resolve(d.Name); !ok {
			out = append(out, d.Name)
		}
	}
	return out
}

// CheckLogFiles opens and closes the file drivers (k8s-file, json-file)
// of s, so that a bad log path fails before the monitor detaches, as
// conmon opens its log file first. Drivers that connect somewhere or start
// programs are only opened by the monitor itself.
func CheckLogFiles(ctx context.Context, c *Config, s *LogSettings, reg *logging.Registry) error {
	drivers, err := s.open(ctx, c, reg, func(name string) bool { return name == DriverK8sFile || name == DriverJSONFile })
	for _, d := range drivers {
		d.Close()
	}
	return err
}

// OpenLogs builds the container's log pipeline from s through reg; tap
// (may be nil) gets every chunk read, before the drivers. With no driver
// the pipeline still reads the output (for the tap) and discards it.
func OpenLogs(ctx context.Context, c *Config, s *LogSettings, reg *logging.Registry, tap func(logging.Stream, []byte)) (*logging.Pipeline, error) {
	popts, err := s.lc.PipelineOptions()
	if err != nil {
		return nil, err
	}
	popts.Tap = tap
	drivers, err := s.open(ctx, c, reg, nil)
	if err != nil {
		return nil, err
	}
	return logging.NewPipeline(s.meta, drivers, popts), nil
}

// open opens the drivers of s (those only accepts, if set); on failure it
// closes what it opened.
func (s *LogSettings) open(ctx context.Context, c *Config, reg *logging.Registry, only func(string) bool) ([]logging.Driver, error) {
	var drivers []logging.Driver
	for _, d := range s.drivers {
		if only != nil && !only(d.Name) {
			continue
		}
		drv, err := reg.Open(ctx, d.Name, logging.Info{Meta: s.meta, Options: d.Options, Dir: c.Bundle})
		if err != nil {
			for _, o := range drivers {
				o.Close()
			}
			return nil, fmt.Errorf("log driver %s: %w", d.Name, err)
		}
		drivers = append(drivers, drv)
	}
	return drivers, nil
}
