package launch

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	runcoptions "github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func mustAny(t *testing.T, url string, m proto.Message) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: url, Value: b}
}

// toOptions is a as start's decoder yields it.
func toOptions(a *anypb.Any) *Options {
	return &Options{TypeURL: a.GetTypeUrl(), Value: a.GetValue()}
}

// sameOptions compares decoded options (a nil and an empty value are the
// same bytes on the wire).
func sameOptions(a, b *Options) bool {
	return (a == nil) == (b == nil) && (a == nil || a.TypeURL == b.TypeURL && bytes.Equal(a.Value, b.Value))
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeStartInput(t *testing.T) {
	runcOpts := mustAny(t, runcOptionsURL, &runcoptions.Options{Root: "/tmp/runc"})
	rtOpts := mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{TypeUrl: "io.containerd.conmon.v1.Options", ConfigPath: "/etc/c.toml"})
	// An Any whose type URL and value happen to look like id and namespace
	// (fields 1 and 2 are strings in both messages).
	lookalike := &anypb.Any{TypeUrl: "c1", Value: []byte("default")}

	tests := []struct {
		name string
		in   []byte
		want *StartInput
		err  bool
	}{
		{name: "empty", in: nil, want: &StartInput{}},
		{name: "runc options Any (1.6 captured shape)", in: mustMarshal(t, runcOpts), want: &StartInput{Options: toOptions(runcOpts)}},
		{name: "runtimeoptions Any (CRI)", in: mustMarshal(t, rtOpts), want: &StartInput{Options: toOptions(rtOpts)}},
		{
			name: "2.3 BootstrapParams",
			in: mustMarshal(t, &bootstrap.BootstrapParams{
				InstanceID: "c1", Namespace: "default", LogLevel: bootstrap.LogLevel_LOG_LEVEL_DEBUG,
				ContainerdTtrpcAddress: "/run/containerd/containerd.sock.ttrpc",
				Extensions:             []*bootstrap.Extension{{Value: runcOpts}},
				SocketDir:              proto.String("/run/containerd/s"),
			}),
			want: &StartInput{Bootstrap: true, Options: toOptions(runcOpts), SocketDir: "/run/containerd/s",
				TTRPCAddress: "/run/containerd/containerd.sock.ttrpc"},
		},
		{
			name: "BootstrapParams without options",
			in:   mustMarshal(t, &bootstrap.BootstrapParams{InstanceID: "c1", Namespace: "default"}),
			want: &StartInput{Bootstrap: true},
		},
		{
			name: "Any that parses as BootstrapParams of another id",
			in:   mustMarshal(t, &anypb.Any{TypeUrl: "other", Value: []byte("default")}),
			want: &StartInput{Options: &Options{TypeURL: "other", Value: []byte("default")}},
		},
		{
			// The id+namespace check cannot tell these apart; containerd
			// never sends an Any whose type URL is the container id.
			name: "lookalike is taken as BootstrapParams",
			in:   mustMarshal(t, lookalike),
			want: &StartInput{Bootstrap: true},
		},
		{name: "garbage", in: []byte{0xff, 0xff, 0xff}, err: true},
		{name: "Any without type URL", in: mustMarshal(t, &anypb.Any{Value: []byte{1}}), err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeStartInput(tt.in, "c1", "default")
			if tt.err {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("got %v, want InvalidArgument", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Bootstrap != tt.want.Bootstrap || got.SocketDir != tt.want.SocketDir ||
				got.TTRPCAddress != tt.want.TTRPCAddress || !sameOptions(got.Options, tt.want.Options) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestResolveConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "shim.toml")
	if err := os.WriteFile(file, []byte("grouping = \"namespace\"\nruntime_root = \"/run/x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	def := DefaultConfig()
	withNS := def
	withNS.Grouping, withNS.RuntimeRoot = GroupNamespace, "/run/x"

	tests := []struct {
		name string
		opts *Options
		flag string
		want Config
		err  bool
	}{
		{name: "no options, flag file", flag: file, want: withNS},
		{name: "config_path", opts: toOptions(mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigPath: file})), want: withNS},
		{
			name: "config_body wins over config_path",
			opts: toOptions(mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigPath: file, ConfigBody: []byte(`grouping = "container"`)})),
			want: func() Config { c := def; c.Grouping = GroupContainer; return c }(),
		},
		{
			name: "prefixed type URL",
			opts: toOptions(mustAny(t, "type.googleapis.com/"+runtimeOptionsURL, &runtimeoptions.Options{ConfigPath: file})),
			want: withNS,
		},
		{
			name: "runc options",
			opts: toOptions(mustAny(t, runcOptionsURL, &runcoptions.Options{BinaryName: "/usr/bin/crun", Root: "/run/r"})),
			flag: file,
			want: func() Config { c := withNS; c.Runtime, c.RuntimeRoot = "/usr/bin/crun", "/run/r"; return c }(),
		},
		{name: "missing flag file", flag: filepath.Join(dir, "nope.toml"), err: true},
		{name: "relative config_path", opts: toOptions(mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigPath: "x.toml"})), err: true},
		{name: "unknown key", opts: toOptions(mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigBody: []byte("grouping2 = 1")})), err: true},
		{name: "bad grouping", opts: toOptions(mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigBody: []byte(`grouping = "pods"`)})), err: true},
		{name: "relative runtime path", opts: toOptions(mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigBody: []byte(`runtime = "bin/runc"`)})), err: true},
		{name: "long socket dir", opts: toOptions(mustAny(t, runtimeOptionsURL, &runtimeoptions.Options{ConfigBody: []byte(`socket_dir = "/` + strings.Repeat("a", 47) + `"`)})), err: true},
		{name: "unknown options type", opts: toOptions(mustAny(t, "io.example.Options", &runtimeoptions.Options{})), err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ResolveConfig(tt.opts, tt.flag)
			if tt.err {
				if err == nil {
					t.Fatalf("got %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestConfigEncodeRoundTrip(t *testing.T) {
	c := DefaultConfig()
	c.Grouping, c.Debug, c.LoggerDirs = GroupNamespace, true, []string{"/a", "/b"}
	got, err := ParseConfig("encoded", c.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip: got %+v, want %+v", got, c)
	}
}
