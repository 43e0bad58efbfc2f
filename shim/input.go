package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the runtime options this shim understands. containerd
// writes bare message names; a "type.googleapis.com/" prefix is accepted
// too.
const (
	runtimeOptionsURL = "runtimeoptions.v1.Options"
	runcOptionsURL    = "containerd.runc.v1.Options"
)

// StartInput is what `start` read on stdin.
type StartInput struct {
	// Options are the runtime options (nil when none were sent).
	Options *anypb.Any
	// Bootstrap is set when stdin held containerd 2.3's BootstrapParams.
	Bootstrap bool
	// SocketDir and TTRPCAddress come from BootstrapParams ("" if absent).
	SocketDir    string
	TTRPCAddress string
}

// DecodeStartInput decodes start's stdin: empty (containerd without
// options, CRI-O), a google.protobuf.Any of runtime options (containerd up
// to 2.2), or a containerd.runtime.bootstrap.v1.BootstrapParams (2.3+).
// Both are binary protobuf and an Any also parses as BootstrapParams
// (fields 1 and 2 are strings in both), so the input is BootstrapParams
// only when its instance_id and namespace are the -id and -namespace of the
// command line.
func DecodeStartInput(data []byte, id, namespace string) (StartInput, error) {
	if len(data) == 0 {
		return StartInput{}, nil
	}
	var bp bootstrap.BootstrapParams
	if mayBeBootstrap(data, id, namespace) && proto.Unmarshal(data, &bp) == nil && bp.GetInstanceID() == id && bp.GetNamespace() == namespace {
		in := StartInput{
			Bootstrap:    true,
			SocketDir:    bp.GetSocketDir(),
			TTRPCAddress: bp.GetContainerdTtrpcAddress(),
		}
		for _, ext := range bp.GetExtensions() {
			if v := ext.GetValue(); v != nil && isOptionsURL(v.GetTypeUrl()) {
				in.Options = v
				break
			}
		}
		return in, nil
	}
	var a anypb.Any
	if err := proto.Unmarshal(data, &a); err != nil {
		return StartInput{}, fmt.Errorf("start: stdin (%d bytes) is neither runtime options nor BootstrapParams: %v: %w", len(data), err, errdefs.ErrInvalidArgument)
	}
	if a.GetTypeUrl() == "" {
		return StartInput{}, fmt.Errorf("start: stdin (%d bytes) holds an Any without a type URL: %w", len(data), errdefs.ErrInvalidArgument)
	}
	return StartInput{Options: &a}, nil
}

// mayBeBootstrap reports whether data can unmarshal as BootstrapParams
// with instance_id id and namespace namespace (fields 1 and 2, the last
// occurrence winning, as in proto.Unmarshal). It reads the wire format
// only: `start` is a short-lived process, and the protobuf runtime's first
// unmarshalling of a message type builds its codec by reflection (0.1-0.4
// ms here); containerd up to 2.2 sends an Any, which need not pay for
// BootstrapParams' too.
func mayBeBootstrap(data []byte, id, namespace string) bool {
	var gotID, gotNS []byte
	err := eachField(data, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		switch {
		case typ != protowire.BytesType:
		case num == 1:
			gotID = v
		case num == 2:
			gotNS = v
		}
	})
	return err == nil && string(gotID) == id && string(gotNS) == namespace
}

func isOptionsURL(u string) bool {
	u = trimTypePrefix(u)
	return u == runtimeOptionsURL || u == runcOptionsURL
}

// trimTypePrefix drops a "type.googleapis.com/"-style prefix.
func trimTypePrefix(u string) string {
	return u[strings.LastIndex(u, "/")+1:]
}

// ResolveConfig picks the configuration, first match wins:
//  1. runtime options runtimeoptions.v1.Options config_body (TOML text),
//  2. its config_path,
//  3. flagPath (-config),
//  4. DefaultConfigPath (absent = defaults).
//
// containerd.runc.v1.Options (sent by ctr for runc-like runtimes) are
// honoured for binary_name and root. Other option types are an
// InvalidArgument error: silently ignoring them would run containers with
// settings the user did not ask for.
func ResolveConfig(opts *anypb.Any, flagPath string) (Config, error) {
	path := flagPath
	if path == "" {
		path = DefaultConfigPath
	}
	if opts == nil {
		return LoadConfig(path)
	}
	switch trimTypePrefix(opts.GetTypeUrl()) {
	case runtimeOptionsURL:
		var ro runtimeoptions.Options
		if err := proto.Unmarshal(opts.GetValue(), &ro); err != nil {
			return Config{}, fmt.Errorf("runtime options %s: %v: %w", opts.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
		}
		if len(ro.GetConfigBody()) > 0 {
			return ParseConfig("runtime options config_body", ro.GetConfigBody())
		}
		if p := ro.GetConfigPath(); p != "" {
			if !filepath.IsAbs(p) {
				return Config{}, fmt.Errorf("runtime options config_path %q must be absolute: %w", p, errdefs.ErrInvalidArgument)
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return Config{}, fmt.Errorf("runtime options config_path: %w", err)
			}
			return ParseConfig(p, data)
		}
		return LoadConfig(path)
	case runcOptionsURL:
		var ro runcoptions.Options
		if err := proto.Unmarshal(opts.GetValue(), &ro); err != nil {
			return Config{}, fmt.Errorf("runtime options %s: %v: %w", opts.GetTypeUrl(), err, errdefs.ErrInvalidArgument)
		}
		c, err := LoadConfig(path)
		if err != nil {
			return Config{}, err
		}
		if ro.GetBinaryName() != "" {
			c.Runtime = ro.GetBinaryName()
		}
		if ro.GetRoot() != "" {
			c.RuntimeRoot = ro.GetRoot()
		}
		if err := c.Validate(); err != nil {
			return Config{}, fmt.Errorf("runtime options %s: %w", opts.GetTypeUrl(), err)
		}
		return c, nil
	default:
		return Config{}, fmt.Errorf("runtime options of type %q not supported (want %s or %s): %w",
			opts.GetTypeUrl(), runtimeOptionsURL, runcOptionsURL, errdefs.ErrInvalidArgument)
	}
}
