package logging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// DefaultConfigPath is where the global logging defaults live: the
// [logging] table of conmon-v2's configuration file.
const DefaultConfigPath = "/etc/conmon-v2/config.toml"

// AnnotationPrefix starts every OCI annotation that configures a
// container's logs: io.containers.conmon-v2.log.<option> = <value>, with the
// option names of Config.Set.
const AnnotationPrefix = "io.containers.conmon-v2.log."

// Fsync policies of the file drivers (option fsync).
const (
	FsyncNone     = "none"     // never fsync: the page cache decides
	FsyncExit     = "exit"     // fsync when the pipeline closes (default)
	FsyncInterval = "interval" // also fsync every fsync-interval, off the write path
)

// Common driver option keys: Config passes them, when set, to every driver
// it opens (Info.Options), merged under the driver's own options. A driver
// ignores those it has no use for; CheckOptions helps it refuse the rest.
const (
	OptPath          = "path"
	OptMaxSize       = "max-size"
	OptMaxFiles      = "max-files"
	OptCompress      = "compress"
	OptFsync         = "fsync"
	OptFsyncInterval = "fsync-interval"
	OptGlobalSizeMax = "global-size-max"
	OptTruncate      = "truncate"
)

// CommonOptions lists the common option keys.
var commonOptions = []string{OptPath, OptMaxSize, OptMaxFiles, OptCompress, OptFsync, OptFsyncInterval, OptGlobalSizeMax, OptTruncate}

// IsCommonOption reports whether key is one of the common driver options.
func IsCommonOption(key string) bool { return slices.Contains(commonOptions, key) }

// CheckOptions returns an ErrInvalidArgument error naming the first option
// of opts that is neither common nor in known. Drivers call it first in
// their Factory.
func CheckOptions(driver string, opts map[string]string, known ...string) error {
	keys := slices.Sorted(maps.Keys(opts))
	for _, k := range keys {
		if !IsCommonOption(k) && !slices.Contains(known, k) {
			return fmt.Errorf("log driver %s: unknown option %q (known: %s): %w",
				driver, k, strings.Join(known, ", "), errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// RedactRule is one redaction of a Config, before compilation.
type RedactRule struct {
	Pattern     string `toml:"pattern"`
	Replacement string `toml:"replacement"`
}

// DefaultRedaction replaces a redacted match when no replacement is given.
const DefaultRedaction = "[REDACTED]"

// Config is the logging configuration of one container: the global
// defaults (LoadConfig), then the container's annotations
// (ApplyAnnotations), then the front end's flags (Set). Scalars set later
// replace earlier ones; lists and maps (drop, redact, labels, driver
// options) add to them, so a global redaction cannot be undone by a
// container. See docs/logging.md for every option.
type Config struct {
	Drivers       []string          // driver names, in order; default k8s-file
	Path          string            // common option path
	MaxSize       int64             // common option max-size (bytes, 0 = unlimited)
	MaxFiles      int               // common option max-files (files kept, including the current)
	Compress      bool              // common option compress (gzip rotated files)
	Truncate      bool              // common option truncate: conmon's --log-size-max (no backups)
	Fsync         string            // common option fsync
	FsyncInterval time.Duration     // common option fsync-interval
	GlobalSizeMax int64             // common option global-size-max (bytes, 0 = unlimited)
	Tag           string            // tag template, expanded into Metadata.Tag
	Labels        map[string]string // added to Metadata.Labels
	Mode          Mode
	MaxBufferSize int64
	RateBytes     float64
	RateLines     float64
	RateBurst     time.Duration
	Drop          []string
	Redact        []RedactRule
	// Cache keeps a bounded k8s-file copy under the container's directory
	// when no chosen driver can be read back (journald, syslog, fluentd,
	// binary), as Docker's dual logging does. On by default.
	Cache         bool
	CacheMaxSize  int64
	CacheMaxFiles int
	// DriverOptions holds each driver's own options, by driver name.
	DriverOptions map[string]map[string]string
	// AnnotationAllow lists the options that annotations may set although
	// they name a host file, socket or address (see ApplyAnnotations):
	// exact keys, or prefixes ending in '*' ("opt.syslog.*"; "*" is every
	// option). Nil, the default, decides by who made the annotations:
	// none of them for a Kubernetes container's spec (FromKubernetes: its
	// annotations come from the cluster's users, the monitor runs as
	// root), every one otherwise (conmonctl passes its trusted --log-opt
	// path and addresses as annotations, Podman its users' --annotation).
	// The TOML and Set forms replace the list; an empty list allows none.
	AnnotationAllow []string

	redactNames []string // the <name> of each Redact entry set through Set
}

// DefaultConfig returns the built-in defaults: k8s-file, blocking, fsync on
// exit, no rotation, the local cache on (8 MiB, 2 files).
func DefaultConfig() Config {
	return Config{
		Drivers:       []string{"k8s-file"},
		Fsync:         FsyncExit,
		FsyncInterval: time.Second,
		Mode:          Blocking,
		MaxBufferSize: DefaultMaxBufferSize,
		Cache:         true,
		CacheMaxSize:  8 << 20,
		CacheMaxFiles: 2,
	}
}

func invalid(option, value string, why string) error {
	return fmt.Errorf("log option %s=%q: %s: %w", option, value, why, errdefs.ErrInvalidArgument)
}

// Set sets one option by name, the names of the annotations (without the
// prefix) and of the TOML file:
//
//	driver (comma-separated list; replaces), path, max-size, max-files
//	(or Docker's max-file),
//	compress, truncate, fsync, fsync-interval, global-size-max, tag,
//	label.<key>, mode, max-buffer-size, rate-bytes, rate-lines, rate-burst,
//	drop[.<name>], redact[.<name>], redact-replacement[.<name>], cache,
//	cache-max-size, cache-max-files, opt.<driver>.<key>
//
// Sizes accept a byte count or a unit (k, m, g, KiB, MiB, GiB: powers of
// 1024; KB, MB, GB: powers of 1000). A bad value or unknown option fails
// with ErrInvalidArgument naming it.
func (c *Config) Set(key, value string) error {
	var err error
	name, sub, _ := strings.Cut(key, ".")
	switch name {
	case "driver", "drivers":
		c.Drivers = nil
		for _, d := range strings.Split(value, ",") {
			if d = strings.TrimSpace(d); d != "" {
				c.Drivers = append(c.Drivers, d)
			}
		}
		if len(c.Drivers) == 0 {
			return invalid(key, value, "no driver named")
		}
	case OptPath:
		c.Path = value
	case OptMaxSize:
		c.MaxSize, err = parseSizeOpt(key, value)
	case OptMaxFiles, "max-file": // max-file: Docker's spelling
		c.MaxFiles, err = parseIntOpt(key, value, 0)
	case OptCompress:
		c.Compress, err = parseBoolOpt(key, value)
	case OptTruncate:
		c.Truncate, err = parseBoolOpt(key, value)
	case OptFsync:
		switch value {
		case FsyncNone, FsyncExit, FsyncInterval:
			c.Fsync = value
		default:
			return invalid(key, value, "want none, exit or interval")
		}
	case OptFsyncInterval:
		c.FsyncInterval, err = parseDurationOpt(key, value)
		if err == nil && c.FsyncInterval <= 0 {
			err = invalid(key, value, "must be positive")
		}
	case OptGlobalSizeMax:
		c.GlobalSizeMax, err = parseSizeOpt(key, value)
	case "tag":
		if _, err := template.New("tag").Option("missingkey=error").Parse(value); err != nil {
			return invalid(key, value, err.Error())
		}
		c.Tag = value
	case "label", "labels":
		if sub == "" {
			return invalid(key, value, "want label.<name>")
		}
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		c.Labels[sub] = value
	case "mode":
		switch value {
		case "blocking":
			c.Mode = Blocking
		case "non-blocking":
			c.Mode = NonBlocking
		default:
			return invalid(key, value, "want blocking or non-blocking")
		}
	case "max-buffer-size":
		c.MaxBufferSize, err = parseSizeOpt(key, value)
		if err == nil && c.MaxBufferSize < DefaultReadSize {
			err = invalid(key, value, fmt.Sprintf("must be at least %d bytes", DefaultReadSize))
		}
		if err == nil && c.MaxBufferSize > MaxMaxBufferSize {
			err = invalid(key, value, fmt.Sprintf("must be at most %d bytes (memory of the monitor)", MaxMaxBufferSize))
		}
	case "rate-bytes":
		var n int64
		n, err = parseSizeOpt(key, value)
		c.RateBytes = float64(n)
	case "rate-lines":
		c.RateLines, err = strconv.ParseFloat(value, 64)
		if err != nil || c.RateLines < 0 {
			err = invalid(key, value, "want a non-negative number of lines per second")
		}
	case "rate-burst":
		c.RateBurst, err = parseDurationOpt(key, value)
	case "drop":
		if _, err := regexp.Compile(value); err != nil {
			return invalid(key, value, err.Error())
		}
		c.Drop = append(c.Drop, value)
	case "redact":
		if _, err := regexp.Compile(value); err != nil {
			return invalid(key, value, err.Error())
		}
		c.Redact = append(c.Redact, RedactRule{Pattern: value, Replacement: DefaultRedaction})
		c.redactNames = append(c.redactNames, sub)
	case "redact-replacement":
		i := slices.Index(c.redactNames, sub)
		if i < 0 {
			return invalid(key, value, "no redact"+strings.TrimPrefix("."+sub, ".")+" pattern set before it")
		}
		c.Redact[i].Replacement = value
	case "annotation-allow":
		c.AnnotationAllow = []string{}
		for _, k := range strings.Split(value, ",") {
			if k = strings.TrimSpace(k); k != "" {
				c.AnnotationAllow = append(c.AnnotationAllow, k)
			}
		}
	case "cache":
		c.Cache, err = parseBoolOpt(key, value)
	case "cache-max-size":
		c.CacheMaxSize, err = parseSizeOpt(key, value)
	case "cache-max-files":
		c.CacheMaxFiles, err = parseIntOpt(key, value, 1)
	case "opt":
		drv, opt, ok := strings.Cut(sub, ".")
		if !ok || drv == "" || opt == "" {
			return invalid(key, value, "want opt.<driver>.<option>")
		}
		if c.DriverOptions == nil {
			c.DriverOptions = map[string]map[string]string{}
		}
		if c.DriverOptions[drv] == nil {
			c.DriverOptions[drv] = map[string]string{}
		}
		c.DriverOptions[drv][opt] = value
	default:
		return fmt.Errorf("unknown log option %q: %w", key, errdefs.ErrInvalidArgument)
	}
	return err
}

// ApplyAnnotations applies every annotation under AnnotationPrefix, in the
// order of their keys (redact before redact-replacement of the same name).
// Other annotations are ignored. The first bad one fails with
// ErrInvalidArgument naming the annotation. Options that name a host
// file, socket or address (path, and a driver's path, socket, address and
// tls-* options) are refused unless AnnotationAllow lists them (by
// default: all of them, except in a Kubernetes container's spec).
func (c *Config) ApplyAnnotations(ann map[string]string) error {
	keys := make([]string, 0, len(ann))
	for k := range ann {
		if strings.HasPrefix(k, AnnotationPrefix) {
			keys = append(keys, k)
		}
	}
	// Patterns first, so that replacements find their rule.
	sort.Slice(keys, func(i, j int) bool {
		ri := strings.HasPrefix(keys[i], AnnotationPrefix+"redact-replacement")
		rj := strings.HasPrefix(keys[j], AnnotationPrefix+"redact-replacement")
		if ri != rj {
			return rj
		}
		return keys[i] < keys[j]
	})
	kube := FromKubernetes(ann)
	for _, k := range keys {
		opt := strings.TrimPrefix(k, AnnotationPrefix)
		if !c.annotationMaySet(opt, kube) {
			return fmt.Errorf("annotation %s: option %s names a file, socket or address on the host, which only the configuration file may set (or list it in annotation-allow): %w",
				k, opt, errdefs.ErrInvalidArgument)
		}
		if err := c.Set(opt, ann[k]); err != nil {
			return fmt.Errorf("annotation %s: %w", k, err)
		}
	}
	return nil
}

// annotationMaySet says whether an annotation may set opt. Annotations come
// from whoever creates the container, and the monitor runs as root: an
// option that names a host file (path), a socket or an address (a driver's
// socket, address, TLS files) lets them write, as root, where they choose
// (a cron directory, a container engine's API socket). Those need
// annotation-allow to list them; annotation-allow itself is never set by
// an annotation. kube says the annotations are a Kubernetes container's.
func (c *Config) annotationMaySet(opt string, kube bool) bool {
	if opt == "annotation-allow" {
		return false
	}
	last := opt
	if i := strings.LastIndexByte(opt, '.'); i >= 0 && strings.HasPrefix(opt, "opt.") {
		last = opt[i+1:]
	} else if strings.HasPrefix(opt, "opt.") {
		last = ""
	}
	sensitive := opt == OptPath || last == OptPath || last == "socket" || last == "address" || strings.HasPrefix(last, "tls-")
	if !sensitive {
		return true
	}
	allow := c.AnnotationAllow
	if allow == nil && !kube {
		return true
	}
	for _, a := range allow {
		if a == opt || strings.HasSuffix(a, "*") && strings.HasPrefix(opt, strings.TrimSuffix(a, "*")) {
			return true
		}
	}
	return false
}

// ParseConfig parses the [logging] table of a TOML configuration over the
// defaults. Keys are those of Set; lists may be TOML arrays (drivers, drop),
// labels a table, redact an array of {pattern, replacement} tables, and
// each driver's options a table [logging.driver.<name>]. An unknown key
// fails with ErrInvalidArgument naming it.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	var doc struct {
		Logging map[string]any `toml:"logging"`
	}
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return c, fmt.Errorf("logging configuration: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	keys := slices.Sorted(maps.Keys(doc.Logging))
	for _, k := range keys {
		if err := c.setTOML(k, doc.Logging[k]); err != nil {
			return c, fmt.Errorf("logging configuration: [logging] %w", err)
		}
	}
	return c, nil
}

func (c *Config) setTOML(key string, v any) error {
	switch key {
	case "driver", "drivers":
		if m, ok := v.(map[string]any); ok {
			return c.setDriverTables(key, m)
		}
		if list, ok := v.([]any); ok {
			var names []string
			for _, x := range list {
				names = append(names, fmt.Sprint(x))
			}
			return c.Set(key, strings.Join(names, ","))
		}
	case "annotation-allow":
		if list, ok := v.([]any); ok {
			var keys []string
			for _, x := range list {
				keys = append(keys, fmt.Sprint(x))
			}
			return c.Set(key, strings.Join(keys, ","))
		}
	case "drop":
		if list, ok := v.([]any); ok {
			for _, x := range list {
				if err := c.Set(key, fmt.Sprint(x)); err != nil {
					return err
				}
			}
			return nil
		}
	case "labels", "label":
		m, ok := v.(map[string]any)
		if !ok {
			return invalid(key, fmt.Sprint(v), "want a table")
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if err := c.Set("label."+k, fmt.Sprint(m[k])); err != nil {
				return err
			}
		}
		return nil
	case "redact":
		var rules []map[string]any
		switch x := v.(type) {
		case []map[string]any:
			rules = x
		case []any:
			for _, r := range x {
				switch r := r.(type) {
				case map[string]any:
					rules = append(rules, r)
				case string:
					rules = append(rules, map[string]any{"pattern": r})
				}
			}
		case string:
			return c.Set(key, x)
		}
		for i, r := range rules {
			name := "toml" + strconv.Itoa(i)
			pat, _ := r["pattern"].(string)
			if pat == "" {
				return invalid("redact", fmt.Sprint(r), "want {pattern, replacement}")
			}
			if err := c.Set("redact."+name, pat); err != nil {
				return err
			}
			if rep, ok := r["replacement"]; ok {
				if err := c.Set("redact-replacement."+name, fmt.Sprint(rep)); err != nil {
					return err
				}
			}
		}
		return nil
	case "driver-options", "opt":
		m, ok := v.(map[string]any)
		if !ok {
			return invalid(key, fmt.Sprint(v), "want a table of driver tables")
		}
		return c.setDriverTables(key, m)
	}
	switch x := v.(type) {
	case map[string]any, []any:
		return invalid(key, fmt.Sprint(v), "want a single value")
	case time.Duration:
		return c.Set(key, x.String())
	}
	return c.Set(key, fmt.Sprint(v))
}

// setDriverTables applies [logging.driver.<name>] tables.
func (c *Config) setDriverTables(key string, m map[string]any) error {
	for _, d := range slices.Sorted(maps.Keys(m)) {
		opts, ok := m[d].(map[string]any)
		if !ok {
			return invalid(key+"."+d, fmt.Sprint(m[d]), "want a table")
		}
		for _, k := range slices.Sorted(maps.Keys(opts)) {
			if err := c.Set("opt."+d+"."+k, fmt.Sprint(opts[k])); err != nil {
				return err
			}
		}
	}
	return nil
}

// LoadConfig reads the configuration file at path. An empty path means
// DefaultConfigPath, which may be missing (the defaults apply); a missing
// explicit path fails with ErrNotFound.
func LoadConfig(path string) (Config, error) {
	explicit := path != ""
	if !explicit {
		path = DefaultConfigPath
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && !explicit {
			return DefaultConfig(), nil
		}
		if errors.Is(err, fs.ErrNotExist) {
			return DefaultConfig(), fmt.Errorf("logging configuration %s: %w", path, errdefs.ErrNotFound)
		}
		return DefaultConfig(), fmt.Errorf("logging configuration %s: %w", path, err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// PipelineOptions compiles the configuration's pipeline part (mode, buffer,
// rate limit, filters). Patterns were checked by Set; a Config built by hand
// may fail here with ErrInvalidArgument naming the pattern.
func (c *Config) PipelineOptions() (PipelineOptions, error) {
	o := PipelineOptions{
		Mode:          c.Mode,
		MaxBufferSize: int(c.MaxBufferSize),
		RateLimit:     RateLimit{BytesPerSec: c.RateBytes, LinesPerSec: c.RateLines, Burst: c.RateBurst},
	}
	for _, d := range c.Drop {
		re, err := regexp.Compile(d)
		if err != nil {
			return o, invalid("drop", d, err.Error())
		}
		o.Drop = append(o.Drop, re)
	}
	for _, r := range c.Redact {
		re, err := regexp.Compile(r.Pattern)
		if err != nil {
			return o, invalid("redact", r.Pattern, err.Error())
		}
		o.Redact = append(o.Redact, Redaction{Pattern: re, Replacement: []byte(r.Replacement)})
	}
	return o, nil
}

// ExpandTag expands a tag template against meta. The template sees
// {{.ID}} (12 characters), {{.FullID}}, {{.Name}}, {{.Namespace}} and
// {{.Labels}}.
func ExpandTag(tmpl string, meta Metadata) (string, error) {
	t, err := template.New("tag").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return "", invalid("tag", tmpl, err.Error())
	}
	id := meta.ID
	if len(id) > 12 {
		id = id[:12]
	}
	var b bytes.Buffer
	err = t.Execute(&b, struct {
		ID, FullID, Name, Namespace string
		Labels                      map[string]string
	}{id, meta.ID, meta.Name, meta.Namespace, meta.Labels})
	if err != nil {
		return "", invalid("tag", tmpl, err.Error())
	}
	return b.String(), nil
}

func (c *Config) commonOptions() map[string]string {
	o := map[string]string{}
	if c.Path != "" {
		o[OptPath] = c.Path
	}
	if c.MaxSize > 0 {
		o[OptMaxSize] = strconv.FormatInt(c.MaxSize, 10)
	}
	if c.MaxFiles > 0 {
		o[OptMaxFiles] = strconv.Itoa(c.MaxFiles)
	}
	if c.Compress {
		o[OptCompress] = "true"
	}
	if c.Truncate {
		o[OptTruncate] = "true"
	}
	if c.Fsync != "" {
		o[OptFsync] = c.Fsync
	}
	if c.FsyncInterval > 0 {
		o[OptFsyncInterval] = c.FsyncInterval.String()
	}
	if c.GlobalSizeMax > 0 {
		o[OptGlobalSizeMax] = strconv.FormatInt(c.GlobalSizeMax, 10)
	}
	return o
}

// MaxMaxBufferSize bounds max-buffer-size: the buffer is the monitor's
// memory, and the option may come from an annotation.
const MaxMaxBufferSize = 256 << 20

// CacheDirName is the directory, under the container's directory, of the
// local cache (see Config.Cache); the cache file is CacheDirName/ctr.log.
const CacheDirName = "log-cache"

// Open builds the container's drivers from the configuration through reg
// and returns the Pipeline that feeds them. dir is the container's
// directory (Info.Dir): file drivers put their file there when no path is
// set, and the local cache lives there. Open fails, having closed whatever
// it opened, with ErrInvalidArgument naming the option for any bad
// configuration.
func (c *Config) Open(ctx context.Context, reg *Registry, meta Metadata, dir string) (_ *Pipeline, retErr error) {
	popts, err := c.PipelineOptions()
	if err != nil {
		return nil, err
	}
	if c.Tag != "" {
		if meta.Tag, err = ExpandTag(c.Tag, meta); err != nil {
			return nil, err
		}
	}
	if len(c.Labels) > 0 {
		labels := maps.Clone(meta.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		maps.Copy(labels, c.Labels)
		meta.Labels = labels
	}
	if len(c.Drivers) == 0 {
		return nil, invalid("driver", "", "no driver named")
	}
	for d := range c.DriverOptions {
		if !slices.ContainsFunc(c.Drivers, func(n string) bool { cn, _ := reg.Resolve(n); cd, _ := reg.Resolve(d); return cn == cd }) {
			return nil, fmt.Errorf("log option opt.%s: driver %q is not enabled: %w", d, d, errdefs.ErrInvalidArgument)
		}
	}
	var drivers []Driver
	defer func() {
		if retErr != nil {
			for _, d := range drivers {
				d.Close()
			}
		}
	}()
	common := c.commonOptions()
	paths := map[string]string{}
	readable := false
	for _, name := range c.Drivers {
		canon, ok := reg.Resolve(name)
		if !ok {
			return nil, fmt.Errorf("log option driver: unknown log driver %q (known: %v): %w", name, reg.Names(), errdefs.ErrInvalidArgument)
		}
		opts := maps.Clone(common)
		if canon != FormatK8sFile && canon != FormatJSONFile {
			// The common path names a log file; other drivers (binary's
			// logger program) take theirs from opt.<driver>.path.
			delete(opts, OptPath)
		}
		maps.Copy(opts, c.DriverOptions[name])
		if name != canon {
			maps.Copy(opts, c.DriverOptions[canon])
		}
		d, err := reg.Open(ctx, canon, Info{Meta: meta, Options: opts, Dir: dir})
		if err != nil {
			return nil, err
		}
		drivers = append(drivers, d)
		if r, ok := Unwrap(d).(Readable); ok {
			readable = true
			src := r.LogSource()
			if other, dup := paths[src.Path]; dup && src.Path != "" {
				return nil, fmt.Errorf("log option path=%q: used by both %s and %s (set opt.<driver>.path): %w",
					src.Path, other, canon, errdefs.ErrInvalidArgument)
			}
			paths[src.Path] = canon
		}
	}
	if !readable && c.Cache && dir != "" {
		if _, ok := reg.Resolve(FormatK8sFile); ok {
			opts := map[string]string{
				OptPath:     filepath.Join(dir, CacheDirName, "ctr.log"),
				OptMaxSize:  strconv.FormatInt(max(c.CacheMaxSize, 64<<10), 10),
				OptMaxFiles: strconv.Itoa(max(c.CacheMaxFiles, 1)),
				OptFsync:    FsyncNone,
			}
			if err := os.MkdirAll(filepath.Join(dir, CacheDirName), 0o700); err != nil {
				return nil, fmt.Errorf("log cache: %w", err)
			}
			d, err := reg.Open(ctx, FormatK8sFile, Info{Meta: meta, Options: opts, Dir: dir})
			if err != nil {
				return nil, fmt.Errorf("log cache: %w", err)
			}
			drivers = append(drivers, named{Driver: Unwrap(d), name: "cache"})
		}
	}
	return NewPipeline(meta, drivers, popts), nil
}

func parseIntOpt(key, value string, minimum int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(value))
	if err != nil || n < minimum {
		return 0, invalid(key, value, fmt.Sprintf("want an integer >= %d", minimum))
	}
	return n, nil
}

func parseBoolOpt(key, value string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(value))
	if err != nil {
		return false, invalid(key, value, "want true or false")
	}
	return b, nil
}

func parseDurationOpt(key, value string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(value))
	if err != nil || d < 0 {
		return 0, invalid(key, value, "want a duration such as 500ms or 2s")
	}
	return d, nil
}

func parseSizeOpt(key, value string) (int64, error) {
	n, err := ParseSize(value)
	if err != nil {
		return 0, invalid(key, value, err.Error())
	}
	return n, nil
}

// ParseSize parses a byte size: a number of bytes, or a number with a unit
// (k, m, g, KiB, MiB, GiB in powers of 1024; KB, MB, GB in powers of 1000;
// a trailing "b"/"B" is optional after k, m, g). It refuses negative sizes.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	if num == "" {
		return 0, errors.New("want a size such as 1048576, 10m or 10MiB")
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, errors.New("want a size such as 1048576, 10m or 10MiB")
	}
	mult := map[string]float64{
		"": 1, "b": 1, "B": 1,
		"k": 1 << 10, "K": 1 << 10, "kb": 1 << 10, "KiB": 1 << 10, "Ki": 1 << 10,
		"m": 1 << 20, "M": 1 << 20, "mb": 1 << 20, "MiB": 1 << 20, "Mi": 1 << 20,
		"g": 1 << 30, "G": 1 << 30, "gb": 1 << 30, "GiB": 1 << 30, "Gi": 1 << 30,
		"KB": 1e3, "MB": 1e6, "GB": 1e9,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	v := f * mult
	if v > 1<<62 {
		return 0, errors.New("too large")
	}
	return int64(v), nil
}

// Annotations that tell who made a spec's annotations.
const (
	// KubernetesAnnotationPrefix starts the annotations every CRI runtime
	// (containerd's CRI plugin, CRI-O) puts in a Kubernetes container's
	// spec. Podman sets a few of them too (io.kubernetes.cri-o.TTY, ...).
	KubernetesAnnotationPrefix = "io.kubernetes."
	// ManagerAnnotation names the engine that made the spec: "libpod"
	// (Podman), "cri-o" (CRI-O), "conmon-v2" (conmonctl and the client
	// package's NewSpec, which use CRI's name and sandbox annotations to
	// name and group).
	ManagerAnnotation = "io.container.manager"
)

// FromKubernetes reports whether a spec's annotations were made by a CRI
// runtime for Kubernetes, whose users choose them, rather than by Podman
// or conmonctl (which name themselves in ManagerAnnotation).
func FromKubernetes(ann map[string]string) bool {
	switch ann[ManagerAnnotation] {
	case "libpod", "conmon-v2":
		return false
	}
	for k := range ann {
		if strings.HasPrefix(k, KubernetesAnnotationPrefix) {
			return true
		}
	}
	return false
}
