package launch

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
)

// socketPathLimit is the longest socket path accepted: sun_path holds 108
// bytes including the terminating NUL, and containerd keeps to 106.
const socketPathLimit = 106

// AddressFile is the file in the bundle that holds the daemon's address.
// containerd 1.6 and CRI-O read it to reconnect after they restart.
const AddressFile = "address"

// GroupKey returns the key of the daemon that serves a container. In
// GroupNamespace mode it is empty (one daemon per namespace). Otherwise it
// is the sandbox-id annotation of the bundle's config.json in GroupPod mode,
// else the container id.
func GroupKey(c Config, id string, annotations map[string]string) string {
	switch c.Grouping {
	case GroupNamespace:
		return ""
	case GroupPod:
		if g := annotations[SandboxIDAnnotation]; g != "" {
			return g
		}
	}
	return id
}

// Member reports whether the task id, whose bundle is bundle, belongs to
// the daemon whose group key is group. Only the pod mode needs the
// bundle's annotations, so only it reads config.json: a daemon that starts
// asks this of every task record of its namespace (Adopt), which in the
// container mode is one small read per task instead of two and a parse of
// each container's OCI spec.
func Member(c Config, group, id, bundle string) bool {
	if c.Grouping != GroupPod {
		return GroupKey(c, id, nil) == group
	}
	ann, err := ReadAnnotations(bundle)
	return err == nil && GroupKey(c, id, ann) == group
}

// OnlyMember returns the one task a daemon whose group key is group can
// serve, if its grouping decides that without reading any bundle: in the
// container mode a daemon serves only the container it is named after.
// A daemon that starts then reads that task's record alone (Adopt).
func OnlyMember(c Config, group string) (id string, ok bool) {
	return group, c.Grouping == GroupContainer && group != ""
}

// ReadAnnotations returns the annotations of the OCI spec in bundle.
func ReadAnnotations(bundle string) (map[string]string, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("read OCI spec of bundle: %w", err)
	}
	var spec struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("parse %s: %v: %w", filepath.Join(bundle, "config.json"), err, errdefs.ErrInvalidArgument)
	}
	return spec.Annotations, nil
}

// SocketPath returns the path of the daemon socket of a group: a name
// derived from containerd's address, the namespace and the group key, so
// that two containerd instances (or CRI-O, whose address is empty) never
// share a daemon, in dir. prefix is prepended to the name; it keeps our
// sockets apart from the runc shim's in a directory both use (containerd
// 2.3's socket_dir), where the runc shim names sockets by the same hash.
func SocketPath(dir, prefix, containerdAddress, namespace, group string) (string, error) {
	sum := sha256.Sum256([]byte(filepath.Join(containerdAddress, namespace, group)))
	p := filepath.Join(dir, prefix+hex.EncodeToString(sum[:]))
	if len(p) > socketPathLimit {
		return "", fmt.Errorf("socket path %q is %d bytes, the limit is %d: choose a shorter socket_dir: %w",
			p, len(p), socketPathLimit, errdefs.ErrInvalidArgument)
	}
	return p, nil
}

// SharedSocketPrefix names our sockets in a socket directory containerd
// shares among shims.
const SharedSocketPrefix = "conmon-"

// Address returns the address form of a socket path.
func Address(socketPath string) string { return "unix://" + socketPath }

// SocketFromAddress strips the unix:// scheme of an address.
func SocketFromAddress(addr string) (string, error) {
	p, ok := strings.CutPrefix(addr, "unix://")
	if !ok || !filepath.IsAbs(p) {
		return "", fmt.Errorf("shim address %q: want unix:///absolute/path: %w", addr, errdefs.ErrInvalidArgument)
	}
	return p, nil
}

// WriteFileAtomic writes data to path through a temporary file and a
// rename, so a reader sees the old or the new content, never a part.
//
// It does not fsync: the files it writes (the bundle's address and shim
// configuration) matter only while this boot's containerd runs and are
// kept under its state directory, a tmpfs that a power loss empties
// anyway. On a disk, two fsyncs cost `start` 1–3 ms each, on every
// container's start (bench/README.md, latency).
func WriteFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	defer func() {
		if err != nil {
			os.Remove(name)
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	// CreateTemp made the file 0600: a chmod only for another mode.
	if mode != 0o600 {
		if err := tmp.Chmod(mode); err != nil {
			tmp.Close()
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(name, path)
}
