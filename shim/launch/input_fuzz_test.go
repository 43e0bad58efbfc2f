package launch

import (
	"bytes"
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
		if trimTypePrefix(in.Options.TypeURL) == runtimeOptionsURL {
			if o, err := decodeRuntimeOptions(in.Options.Value); err == nil && len(o.configBody) == 0 && o.configPath != "" {
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

// FuzzDecodersMatchProto checks the wire-format decoders of start's
// input against the protobuf runtime: on any bytes, each fails exactly
// when proto.Unmarshal fails for its message, and otherwise yields the
// same values.
func FuzzDecodersMatchProto(f *testing.F) {
	ro := fuzzMarshal(&runtimeoptions.Options{TypeUrl: "x", ConfigPath: "/etc/c.toml", ConfigBody: []byte("grouping = \"container\"\n")})
	rc := fuzzMarshal(&runcoptions.Options{BinaryName: "/usr/bin/runc", Root: "/run/x", ShimCgroup: "/c", IoUid: 7, TaskApiAddress: "a"})
	for _, seed := range [][]byte{
		nil,
		ro,
		rc,
		fuzzMarshal(&anypb.Any{TypeUrl: runtimeOptionsURL, Value: ro}),
		fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c1", Namespace: "default", SocketDir: proto.String("/run/s"),
			ContainerdTtrpcAddress: "/run/t", LogLevel: bootstrap.LogLevel_LOG_LEVEL_DEBUG,
			Extensions: []*bootstrap.Extension{{}, {Value: &anypb.Any{TypeUrl: runtimeOptionsURL, Value: ro}}}}),
		append(fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c1", Namespace: "default"}), fuzzMarshal(&bootstrap.BootstrapParams{InstanceID: "c2"})...),
		{0x0a, 0x02, 0xff, 0xfe},                         // field 1 not UTF-8
		{0x08, 0x01, 0x0a, 0x02, 'c', '1'},               // field 1 as a varint, then as a string
		{0x42, 0x04, 0x0a, 0x02, 0x0a, 0x00, 0x42, 0x00}, // extensions: a value, none
		{0x42, 0x04, 0x0a, 0x02, 0x0a, 0x00, 0x0c},       // an end-group with no group
		{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(what string, err, protoErr error, same bool) {
			t.Helper()
			if (err == nil) != (protoErr == nil) {
				t.Fatalf("%s of %x: decoder error %v, proto.Unmarshal error %v", what, data, err, protoErr)
			}
			if err == nil && !same {
				t.Fatalf("%s of %x: the decoder and proto.Unmarshal disagree", what, data)
			}
		}

		var a anypb.Any
		gotAny, err := decodeAny(data)
		perr := proto.Unmarshal(data, &a)
		check("Any", err, perr, gotAny.TypeURL == a.GetTypeUrl() && bytes.Equal(gotAny.Value, a.GetValue()))

		var bp bootstrap.BootstrapParams
		gotBP, err := decodeBootstrapParams(data)
		perr = proto.Unmarshal(data, &bp)
		same := gotBP.instanceID == bp.GetInstanceID() && gotBP.namespace == bp.GetNamespace() &&
			gotBP.ttrpcAddress == bp.GetContainerdTtrpcAddress() && gotBP.socketDir == bp.GetSocketDir() &&
			len(gotBP.extensions) == len(bp.GetExtensions())
		for i := 0; same && i < len(gotBP.extensions); i++ {
			got, want := gotBP.extensions[i], bp.GetExtensions()[i].GetValue()
			same = (got == nil) == (want == nil) &&
				(got == nil || got.TypeURL == want.GetTypeUrl() && bytes.Equal(got.Value, want.GetValue()))
		}
		check("BootstrapParams", err, perr, same)

		var o runtimeoptions.Options
		gotRO, err := decodeRuntimeOptions(data)
		perr = proto.Unmarshal(data, &o)
		check("runtimeoptions.v1.Options", err, perr, gotRO.configPath == o.GetConfigPath() && bytes.Equal(gotRO.configBody, o.GetConfigBody()))

		var rco runcoptions.Options
		gotRC, err := decodeRuncOptions(data)
		perr = proto.Unmarshal(data, &rco)
		check("containerd.runc.v1.Options", err, perr, gotRC.binaryName == rco.GetBinaryName() && gotRC.root == rco.GetRoot())
	})
}
