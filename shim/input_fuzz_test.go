package shim

import (
	"errors"
	"reflect"
	"testing"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func fuzzMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzStartInput: whatever containerd (or anything able to run the shim)
// writes on start's stdin decodes, and resolves to a configuration, or
// is refused with an InvalidArgument; nothing panics.
func FuzzStartInput(f *testing.F) {
	ro := fuzzMarshal(&runtimeoptions.Options{ConfigBody: []byte("grouping = \"container\"\n")})
	rc := fuzzMarshal(&runcoptions.Options{BinaryName: "/usr/bin/runc", Root: "/run/x"})
	for _, seed := range [][]byte{
		nil,
		fuzzMarshal(&anypb.Any{TypeUrl: runtimeOptionsURL, Value: ro}),
		fuzzMarshal(&anypb.Any{TypeUrl: "type.googleapis.com/" + runcOptionsURL, Value: rc}),
		fuzzMarshal(&anypb.Any{TypeUrl: "other.Options", Value: []byte{1, 2}}),
		fuzzMarshal(&anypb.Any{TypeUrl: runtimeOptionsURL, Value: []byte{0xff}}),
		fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c1", Namespace: "default", SocketDir: proto.String("/run/s"),
			Extensions: []*bootstrap.Extension{{Value: &anypb.Any{TypeUrl: runtimeOptionsURL, Value: ro}}}}),
		{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeStartInput(data, "c1", "default")
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("DecodeStartInput: %v is not InvalidArgument", err)
			}
			return
		}
		if in.Options == nil {
			return
		}
		// A config_path in the input would read a file of this machine;
		// the fuzzer only exercises the in-band forms.
		if isOptionsURL(in.Options.GetTypeUrl()) && trimTypePrefix(in.Options.GetTypeUrl()) == runtimeOptionsURL {
			var o runtimeoptions.Options
			if proto.Unmarshal(in.Options.GetValue(), &o) == nil && len(o.GetConfigBody()) == 0 && o.GetConfigPath() != "" {
				return
			}
		}
		c, err := ResolveConfig(in.Options, "/nonexistent/conmon-v2-fuzz.toml")
		if err != nil {
			return // a missing -config file is not InvalidArgument; that is fine
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ResolveConfig returned an invalid configuration: %v", err)
		}
	})
}

// FuzzShimConfig: the shim's TOML configuration either parses into a
// valid Config that survives Encode and a second parse unchanged, or is an
// InvalidArgument.
func FuzzShimConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"grouping = \"container\"\nruntime = \"/usr/bin/runc\"\n",
		"grouping = \"namespace\"\nsocket_dir = \"/run/x\"\nlogger_dirs = [\"/a\", \"/b\"]\ndebug = true\n",
		"grouping = \"nope\"\n",
		"state_dir = \"relative\"\n",
		"socket_dir = \"/" + string(make([]byte, 60)) + "\"\n",
		"unknown = 1\n",
		"logger_dirs = \"/a\"\n",
		"runtime = \"a/b\"\n",
		"[limits]\nrequests = 8\nqueue = 0\nqueue_timeout = \"1.5s\"\nwaits = 3\nrequests_per_connection = 9\n",
		"[limits]\nqueue_timeout = \"-1s\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("fuzz", data)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseConfig: %v is not InvalidArgument", err)
			}
			return
		}
		enc := c.Encode()
		c2, err := ParseConfig("encoded", enc)
		if err != nil {
			t.Fatalf("Encode gave %q, which does not parse: %v", enc, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed the configuration:\n%+v\n%+v", c, c2)
		}
	})
}

// FuzzMayBeBootstrap checks that the wire-format pre-check never rejects
// an input that proto.Unmarshal takes for BootstrapParams of c1/default.
func FuzzMayBeBootstrap(f *testing.F) {
	ro := fuzzMarshal(&runtimeoptions.Options{ConfigBody: []byte("grouping = \"container\"\n")})
	for _, seed := range [][]byte{
		nil,
		fuzzMarshal(&anypb.Any{TypeUrl: runtimeOptionsURL, Value: ro}),
		fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c1", Namespace: "default", SocketDir: proto.String("/run/s"),
			Extensions: []*bootstrap.Extension{{Value: &anypb.Any{TypeUrl: runtimeOptionsURL, Value: ro}}}}),
		append(fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c1", Namespace: "default"}), fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c2"})...),
		append(fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c2", Namespace: "default"}), fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c1"})...),
		{0x08, 0x01, 0x0a, 0x02, 'c', '1', 0x12, 0x07, 'd', 'e', 'f', 'a', 'u', 'l', 't'},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var bp bootstrap.BootstrapParams
		full := proto.Unmarshal(data, &bp) == nil && bp.GetInstanceID() == "c1" && bp.GetNamespace() == "default"
		if full && !mayBeBootstrap(data, "c1", "default") {
			t.Fatalf("mayBeBootstrap rejects %x, which unmarshals as BootstrapParams of c1/default", data)
		}
	})
}
