package client

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SpecOpts are the parts of a container's OCI spec a user chooses; NewSpec
// fills in the rest with the defaults `runc spec` uses.
type SpecOpts struct {
	// Rootfs is the container's root directory (made absolute).
	Rootfs string
	// Args is the process to run; Env is added to PATH (and TERM with a
	// terminal).
	Args     []string
	Env      []string
	Cwd      string
	Terminal bool
	Hostname string
	// MemoryLimit in bytes; 0 = none.
	MemoryLimit int64
	// CgroupsPath for the runtime; empty = /conmon-v2/<hostname>.
	CgroupsPath string
	// ReadonlyRootfs mounts the root read-only (runc spec's default);
	// conmonctl leaves it writable, as docker does.
	ReadonlyRootfs bool
	// Annotations of the spec. NewSpec adds ManagerAnnotation: Manager
	// unless it is set.
	Annotations map[string]string
}

// ManagerAnnotation names the engine that made a spec (Podman sets
// "libpod", CRI-O "cri-o"). Specs made through this package carry Manager:
// their annotations are their author's, not a Kubernetes user's, even
// when they use CRI's sandbox annotation (GroupAnnotation) to group, so
// the shim lets their log annotations name host paths
// (logging.FromKubernetes).
const (
	ManagerAnnotation = "io.container.manager"
	Manager           = "conmon-v2"
)

// NewSpec returns an OCI runtime spec for a Linux container: new pid, ipc,
// uts, mount and network namespaces (no network but loopback), the runc
// default capabilities, masked and read-only /proc paths, and the usual
// /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys mounts.
func NewSpec(o SpecOpts) (*specs.Spec, error) {
	if len(o.Args) == 0 {
		return nil, fmt.Errorf("no command to run: %w", errdefs.ErrInvalidArgument)
	}
	// runc wants an absolute path without symlinks.
	rootfs, err := filepath.Abs(o.Rootfs)
	if err == nil {
		rootfs, err = filepath.EvalSymlinks(rootfs)
	}
	if err != nil {
		return nil, fmt.Errorf("rootfs %s: %v: %w", o.Rootfs, err, errdefs.ErrInvalidArgument)
	}
	if fi, err := os.Stat(rootfs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("rootfs %s is not a directory: %w", o.Rootfs, errdefs.ErrInvalidArgument)
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if o.Terminal {
		env = append(env, "TERM=xterm")
	}
	for _, kv := range o.Env {
		if !strings.Contains(kv, "=") || strings.HasPrefix(kv, "=") {
			return nil, fmt.Errorf("environment variable %q is not KEY=VALUE: %w", kv, errdefs.ErrInvalidArgument)
		}
		env = append(env, kv)
	}
	cwd := o.Cwd
	if cwd == "" {
		cwd = "/"
	}
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	cgroupsPath := o.CgroupsPath
	if cgroupsPath == "" {
		cgroupsPath = "/conmon-v2/" + o.Hostname
	}
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Terminal: o.Terminal,
			User:     specs.User{UID: 0, GID: 0},
			Args:     o.Args,
			Env:      env,
			Cwd:      cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: rootfs, Readonly: o.ReadonlyRootfs},
		Hostname: o.Hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Annotations: withManager(o.Annotations),
		Linux: &specs.Linux{
			CgroupsPath: cgroupsPath,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	if o.MemoryLimit < 0 {
		return nil, fmt.Errorf("memory limit %d is negative: %w", o.MemoryLimit, errdefs.ErrInvalidArgument)
	}
	if o.MemoryLimit > 0 {
		limit := o.MemoryLimit
		s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	return s, nil
}

// WriteSpec writes s as <bundle>/config.json (creating bundle).
func WriteSpec(bundle string, s *specs.Spec) error {
	if err := os.MkdirAll(bundle, 0o711); err != nil {
		return fmt.Errorf("bundle %s: %w", bundle, err)
	}
	data, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return err
	}
	tmp := filepath.Join(bundle, ".config.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, "config.json"))
}

// ReadSpec reads <bundle>/config.json.
func ReadSpec(bundle string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("bundle %s: bad config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return &s, nil
}

// withManager returns a copy of ann with ManagerAnnotation set to Manager
// unless ann sets it.
func withManager(ann map[string]string) map[string]string {
	out := make(map[string]string, len(ann)+1)
	for k, v := range ann {
		out[k] = v
	}
	if _, ok := out[ManagerAnnotation]; !ok {
		out[ManagerAnnotation] = Manager
	}
	return out
}
