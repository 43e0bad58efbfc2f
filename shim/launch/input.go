package launch

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protowire"
)

// Type URLs of the runtime options this shim understands. containerd
// writes bare message names; a "type.googleapis.com/" prefix is accepted
// too.
const (
	runtimeOptionsURL = "runtimeoptions.v1.Options"
	runcOptionsURL    = "containerd.runc.v1.Options"
)

// Options are runtime options as containerd sends them: the fields of a
// google.protobuf.Any.
type Options struct {
	TypeURL string
	Value   []byte
}

// StartInput is what `start` read on stdin.
type StartInput struct {
	// Options are the runtime options (nil when none were sent).
	Options *Options
	// Bootstrap is set when stdin held containerd 2.3's BootstrapParams.
	Bootstrap bool
	// SocketDir and TTRPCAddress come from BootstrapParams ("" if absent).
	SocketDir    string
	TTRPCAddress string
}

// The messages start reads are decoded from the wire format here, not
// with the protobuf runtime: the launcher links no protobuf registry
// (docs/design.md §1.6). Each decoder keeps proto.Unmarshal's rules for
// its message: the last occurrence of a field wins, occurrences of a
// message field merge, a field of the wrong wire type is an unknown field,
// and a proto3 string must be valid UTF-8. FuzzDecodersMatchProto checks
// them against the protobuf runtime.

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
	if bp, err := decodeBootstrapParams(data); err == nil && bp.instanceID == id && bp.namespace == namespace {
		in := StartInput{Bootstrap: true, SocketDir: bp.socketDir, TTRPCAddress: bp.ttrpcAddress}
		for _, v := range bp.extensions {
			if v != nil && isOptionsURL(v.TypeURL) {
				in.Options = v
				break
			}
		}
		return in, nil
	}
	a, err := decodeAny(data)
	if err != nil {
		return StartInput{}, fmt.Errorf("start: stdin (%d bytes) is neither runtime options nor BootstrapParams: %v: %w", len(data), err, errdefs.ErrInvalidArgument)
	}
	if a.TypeURL == "" {
		return StartInput{}, fmt.Errorf("start: stdin (%d bytes) holds an Any without a type URL: %w", len(data), errdefs.ErrInvalidArgument)
	}
	return StartInput{Options: &a}, nil
}

// decodeAny decodes a serialized google.protobuf.Any (type_url 1, value 2).
func decodeAny(b []byte) (Options, error) {
	var o Options
	err := eachMessageField(b, []protowire.Number{1}, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		switch {
		case typ != protowire.BytesType:
		case num == 1:
			o.TypeURL = string(v)
		case num == 2:
			o.Value = v
		}
	})
	return o, err
}

// bootstrapParams are the fields start uses of a
// containerd.runtime.bootstrap.v1.BootstrapParams.
type bootstrapParams struct {
	instanceID, namespace string // fields 1, 2
	ttrpcAddress          string // field 5
	socketDir             string // field 9
	// extensions holds each Extension's value (field 8, Extension.value
	// is field 1), nil for an Extension without one.
	extensions []*Options
}

func decodeBootstrapParams(b []byte) (bootstrapParams, error) {
	var bp bootstrapParams
	var nested error
	err := eachMessageField(b, []protowire.Number{1, 2, 4, 5, 6, 7, 9}, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		if typ != protowire.BytesType {
			return
		}
		switch num {
		case 1:
			bp.instanceID = string(v)
		case 2:
			bp.namespace = string(v)
		case 5:
			bp.ttrpcAddress = string(v)
		case 9:
			bp.socketDir = string(v)
		case 8:
			// Extension: its value (an Any) may come in several pieces,
			// which merge like the bytes of one message.
			var value []byte
			present := false
			err := eachMessageField(v, nil, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
				if num == 1 && typ == protowire.BytesType {
					value, present = append(value, v...), true
				}
			})
			var ext *Options
			if err == nil && present {
				var a Options
				if a, err = decodeAny(value); err == nil {
					ext = &a
				}
			}
			if err != nil && nested == nil {
				nested = err
			}
			bp.extensions = append(bp.extensions, ext)
		}
	})
	if err == nil {
		err = nested
	}
	return bp, err
}

// eachMessageField walks the fields of message b (see eachField) and
// fails, as proto.Unmarshal does, when a length-delimited field whose
// number is in strs (the message's proto3 string fields) is not UTF-8.
func eachMessageField(b []byte, strs []protowire.Number, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64)) error {
	var bad protowire.Number
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) {
		if typ == protowire.BytesType && bad == 0 && slices.Contains(strs, num) && !utf8.Valid(v) {
			bad = num
		}
		fn(num, typ, v, x)
	})
	if err == nil && bad != 0 {
		err = fmt.Errorf("string field %d is not valid UTF-8", bad)
	}
	return err
}

// runtimeOptions are the fields of a runtimeoptions.v1.Options.
type runtimeOptions struct {
	configPath string // field 2
	configBody []byte // field 3
}

func decodeRuntimeOptions(b []byte) (runtimeOptions, error) {
	var ro runtimeOptions
	err := eachMessageField(b, []protowire.Number{1, 2}, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		switch {
		case typ != protowire.BytesType:
		case num == 2:
			ro.configPath = string(v)
		case num == 3:
			ro.configBody = v
		}
	})
	return ro, err
}

// runcOptions are the fields start honours of a containerd.runc.v1.Options.
type runcOptions struct {
	binaryName string // field 6
	root       string // field 7
}

func decodeRuncOptions(b []byte) (runcOptions, error) {
	var ro runcOptions
	err := eachMessageField(b, []protowire.Number{3, 6, 7, 10, 11, 12}, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) {
		switch {
		case typ != protowire.BytesType:
		case num == 6:
			ro.binaryName = string(v)
		case num == 7:
			ro.root = string(v)
		}
	})
	return ro, err
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
func ResolveConfig(opts *Options, flagPath string) (Config, error) {
	path := flagPath
	if path == "" {
		path = DefaultConfigPath
	}
	if opts == nil {
		return LoadConfig(path)
	}
	switch trimTypePrefix(opts.TypeURL) {
	case runtimeOptionsURL:
		ro, err := decodeRuntimeOptions(opts.Value)
		if err != nil {
			return Config{}, fmt.Errorf("runtime options %s: %v: %w", opts.TypeURL, err, errdefs.ErrInvalidArgument)
		}
		if len(ro.configBody) > 0 {
			return ParseConfig("runtime options config_body", ro.configBody)
		}
		if p := ro.configPath; p != "" {
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
		ro, err := decodeRuncOptions(opts.Value)
		if err != nil {
			return Config{}, fmt.Errorf("runtime options %s: %v: %w", opts.TypeURL, err, errdefs.ErrInvalidArgument)
		}
		c, err := LoadConfig(path)
		if err != nil {
			return Config{}, err
		}
		if ro.binaryName != "" {
			c.Runtime = ro.binaryName
		}
		if ro.root != "" {
			c.RuntimeRoot = ro.root
		}
		if err := c.Validate(); err != nil {
			return Config{}, fmt.Errorf("runtime options %s: %w", opts.TypeURL, err)
		}
		return c, nil
	default:
		return Config{}, fmt.Errorf("runtime options of type %q not supported (want %s or %s): %w",
			opts.TypeURL, runtimeOptionsURL, runcOptionsURL, errdefs.ErrInvalidArgument)
	}
}
