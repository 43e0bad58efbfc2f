package launch

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
	"github.com/containers/conmon-v2/logging"
)

// DefaultConfigPath is read when neither the runtime options nor -config
// name a configuration file. A missing default file means the defaults.
const DefaultConfigPath = "/etc/conmon-v2/config.toml"

// ConfigEnv carries the resolved configuration (as TOML) from `start` to the
// daemon it spawns, so both use the same settings even when the settings
// came in a runtime option's config_body.
const ConfigEnv = "CONMON_V2_SHIM_CONFIG"

// Grouping modes: which containers share one shim daemon.
const (
	// GroupPod: containers with the same io.kubernetes.cri.sandbox-id
	// annotation share a daemon; others get one each. This is what the
	// containerd runc shim does.
	GroupPod = "pod"
	// GroupContainer: one daemon per container, annotations ignored.
	GroupContainer = "container"
	// GroupNamespace: one daemon per containerd namespace (dense mode).
	// Fewest processes and the smallest memory per container; the price is
	// a shared fate: a crash or restart of that daemon touches every
	// container of the namespace, and its serialised work (events, state
	// writes) is shared among them.
	GroupNamespace = "namespace"
)

// SandboxIDAnnotation is the OCI annotation CRI sets on every container of
// a pod (and on the pod's sandbox container).
const SandboxIDAnnotation = "io.kubernetes.cri.sandbox-id"

// Config is the shim configuration file (TOML). Every field is optional.
type Config struct {
	// Grouping is "pod" (default), "container" or "namespace".
	Grouping string `toml:"grouping"`
	// Runtime is the OCI runtime binary: a name looked up in PATH or an
	// absolute path. Default "runc".
	Runtime string `toml:"runtime"`
	// RuntimeRoot is the runtime's state root (runc --root); a directory
	// per containerd namespace is made under it.
	RuntimeRoot string `toml:"runtime_root"`
	// StateDir holds the shim's task records, a directory per namespace.
	StateDir string `toml:"state_dir"`
	// SocketDir holds the daemons' ttrpc sockets. Socket paths must stay
	// within the 107 bytes of a unix socket address.
	SocketDir string `toml:"socket_dir"`
	// LoggerDirs are the only directories binary:// log URIs may name a
	// program in.
	LoggerDirs []string `toml:"logger_dirs"`
	// Debug turns on debug logging of the daemon (as -debug does).
	Debug bool `toml:"debug"`
	// Keeper runs each group's daemon under a keeper process that
	// restarts it when it crashes and records the exit status of the
	// containers that exit meanwhile (docs/resilience.md). Default off:
	// it costs one more process per group.
	Keeper bool `toml:"keeper"`
	// Limits is the [limits] table: how many requests the daemon serves
	// at once (limit.go, docs/containerd.md).
	Limits Limits `toml:"limits"`
	// Logging is the [logging] table of the same file: the defaults for
	// container logs that annotations refine (docs/logging.md). It is kept
	// as decoded TOML, validated by the logging package when the file is
	// parsed, so that Encode writes it back unchanged for the daemon.
	Logging map[string]any `toml:"logging,omitempty"`
}

// DefaultConfig returns the settings used when no file says otherwise.
func DefaultConfig() Config {
	return Config{
		Grouping:    GroupPod,
		Runtime:     "runc",
		RuntimeRoot: "/run/conmon-v2/runc",
		StateDir:    "/run/conmon-v2/state",
		SocketDir:   "/run/conmon-v2/s",
		LoggerDirs:  []string{"/usr/libexec/conmon-v2/loggers", "/usr/local/libexec/conmon-v2/loggers"},
		Limits:      DefaultLimits(),
	}
}

// ParseConfig reads TOML text over the defaults. name identifies the text in
// errors (a file path, or "runtime options config_body"). Unknown keys and
// bad values are InvalidArgument errors.
func ParseConfig(name string, data []byte) (Config, error) {
	c := DefaultConfig()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c)
	if err != nil {
		return Config{}, fmt.Errorf("shim config %s: %v: %w", name, err, errdefs.ErrInvalidArgument)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("shim config %s: unknown keys %s: %w", name, strings.Join(keys, ", "), errdefs.ErrInvalidArgument)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("shim config %s: %w", name, err)
	}
	if _, err := c.LoggingConfig(); err != nil {
		return Config{}, fmt.Errorf("shim config %s: %w", name, err)
	}
	return c, nil
}

// LoggingConfig returns the container log defaults of the [logging] table,
// or the logging package's defaults when the file has none.
func (c Config) LoggingConfig() (logging.Config, error) {
	if len(c.Logging) == 0 {
		return logging.DefaultConfig(), nil
	}
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(map[string]any{"logging": c.Logging}); err != nil {
		return logging.Config{}, fmt.Errorf("[logging]: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return logging.ParseConfig(b.Bytes())
}

// LoadConfig reads the file at path. A missing file is an error, except for
// DefaultConfigPath, whose absence means the defaults.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) && path == DefaultConfigPath {
			return DefaultConfig(), nil
		}
		return Config{}, fmt.Errorf("shim config: %w", err)
	}
	return ParseConfig(path, data)
}

// Validate checks every field.
func (c Config) Validate() error {
	switch c.Grouping {
	case GroupPod, GroupContainer, GroupNamespace:
	default:
		return fmt.Errorf("grouping %q: want %q, %q or %q: %w", c.Grouping, GroupPod, GroupContainer, GroupNamespace, errdefs.ErrInvalidArgument)
	}
	if c.Runtime == "" {
		return fmt.Errorf("runtime must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if strings.Contains(c.Runtime, "/") && !filepath.IsAbs(c.Runtime) {
		return fmt.Errorf("runtime %q: a path must be absolute: %w", c.Runtime, errdefs.ErrInvalidArgument)
	}
	for _, d := range []struct{ key, val string }{
		{"runtime_root", c.RuntimeRoot}, {"state_dir", c.StateDir}, {"socket_dir", c.SocketDir},
	} {
		if !filepath.IsAbs(d.val) {
			return fmt.Errorf("%s %q must be an absolute path: %w", d.key, d.val, errdefs.ErrInvalidArgument)
		}
	}
	// A socket name is 64 hex digits; the path must fit sun_path (108
	// bytes with its NUL, and containerd allows 106).
	if n := len(c.SocketDir) + 1 + 64; n > socketPathLimit {
		return fmt.Errorf("socket_dir %q: socket paths would be %d bytes, the limit is %d: %w", c.SocketDir, n, socketPathLimit, errdefs.ErrInvalidArgument)
	}
	for _, d := range c.LoggerDirs {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("logger_dirs entry %q must be an absolute path: %w", d, errdefs.ErrInvalidArgument)
		}
	}
	return c.Limits.Validate()
}

// Encode returns c as TOML, for ConfigEnv.
func (c Config) Encode() []byte {
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		panic(err) // a struct of strings and bools always encodes
	}
	return b.Bytes()
}
