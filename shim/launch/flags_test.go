package launch

import (
	"reflect"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want Flags
		err  bool
	}{
		{
			name: "containerd 1.6 start",
			args: []string{"-namespace", "default", "-address", "/run/c.sock", "-publish-binary", "/usr/bin/containerd", "-id", "c1", "-debug", "start"},
			want: Flags{Namespace: "default", Address: "/run/c.sock", PublishBinary: "/usr/bin/containerd", ID: "c1", Debug: true, Action: "start"},
		},
		{
			name: "delete with bundle",
			args: []string{"-namespace", "k8s.io", "-address", "/a", "-publish-binary", "/b", "-id", "c1", "-bundle", "/s/c1", "delete"},
			want: Flags{Namespace: "k8s.io", Address: "/a", PublishBinary: "/b", ID: "c1", Bundle: "/s/c1", Action: "delete"},
		},
		{
			name: "CRI-O empty address",
			args: []string{"-namespace", "default", "-address", "", "-publish-binary", "/usr/bin/crio", "-id", "x", "start"},
			want: Flags{Namespace: "default", PublishBinary: "/usr/bin/crio", ID: "x", Action: "start"},
		},
		{
			name: "daemon, equals form, double dash",
			args: []string{"--namespace=ns", "-id=c2", "-debug=false", "-socket", "/s"},
			want: Flags{Namespace: "ns", ID: "c2", Socket: "/s"},
		},
		{
			name: "version",
			args: []string{"-v"},
			want: Flags{Version: true},
		},
		{
			name: "info and debug socket",
			args: []string{"-info", "-debug-socket", "/d", "-config", "/etc/x.toml"},
			want: Flags{Info: true, DebugSocket: "/d", Config: "/etc/x.toml"},
		},
		{
			name: "unknown flags with and without values",
			args: []string{"-future", "val", "-flag2=x", "-boolish", "-id", "c", "-later", "start"},
			want: Flags{ID: "c", Action: "start", Ignored: []string{"future", "flag2", "boolish", "later"}},
		},
		{name: "missing value", args: []string{"-id"}, err: true},
		{name: "bad bool", args: []string{"-debug=maybe"}, err: true},
		{name: "unknown action", args: []string{"-id", "c", "run"}, err: true},
		{name: "two actions", args: []string{"start", "delete"}, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseFlags(tt.args)
			if tt.err {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("got %v, want an InvalidArgument error", err)
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

func TestValidateIdentifier(t *testing.T) {
	long := ""
	for range 77 {
		long += "a"
	}
	tests := []struct {
		in string
		ok bool
	}{
		{"c1", true}, {"k8s.io", true}, {"a-b_c.d", true}, {"0123abc", true}, {long[:76], true},
		{"", false}, {long, false}, {"-a", false}, {"a-", false}, {"a--b", false}, {"a/b", false},
		{"../x", false}, {"a b", false}, {"é", false},
	}
	for _, tt := range tests {
		err := ValidateIdentifier("id", tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateIdentifier(%q) = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errdefs.IsInvalidArgument(err) {
			t.Errorf("ValidateIdentifier(%q): %v is not InvalidArgument", tt.in, err)
		}
	}
}
