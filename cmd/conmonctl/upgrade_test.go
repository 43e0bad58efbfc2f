package main

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseShimsArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		binary  string
		all     bool
		want    shimsArgs
		wantErr string
	}{
		{name: "list", want: shimsArgs{}},
		{name: "list with --all", all: true, wantErr: "go with `shims upgrade`"},
		{name: "list with --binary", binary: "/b", wantErr: "go with `shims upgrade`"},
		{name: "unknown subcommand", args: []string{"upgrad"}, wantErr: `unknown shims subcommand "upgrad"`},
		{name: "one group", args: []string{"upgrade", "pod1"}, want: shimsArgs{upgrade: true, targets: []string{"pod1"}}},
		{name: "groups", args: []string{"upgrade", "pod1", "web"}, want: shimsArgs{upgrade: true, targets: []string{"pod1", "web"}}},
		{name: "all", args: []string{"upgrade"}, all: true, want: shimsArgs{upgrade: true, all: true, targets: []string{}}},
		{name: "absolute binary", args: []string{"upgrade", "pod1"}, binary: "/usr/bin/shim",
			want: shimsArgs{upgrade: true, binary: "/usr/bin/shim", targets: []string{"pod1"}}},
		{name: "relative binary made absolute", args: []string{"upgrade"}, all: true, binary: "bin/shim",
			want: shimsArgs{upgrade: true, all: true, binary: "/work/dir/bin/shim", targets: []string{}}},
		{name: "neither group nor --all", args: []string{"upgrade"}, wantErr: "missing GROUP (or --all)"},
		{name: "both group and --all", args: []string{"upgrade", "pod1"}, all: true, wantErr: "either --all or GROUP"},
		{name: "empty group", args: []string{"upgrade", ""}, wantErr: "empty GROUP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseShimsArgs(tc.args, tc.binary, tc.all, "/work/dir")
			if tc.wantErr != "" {
				var ue usageError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("got %+v, %v; want a usage error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestShimsUpgradeCommandLine runs the command's flag parsing end to end:
// flags anywhere, usage errors exit 2, an unknown group is reported.
func TestShimsUpgradeCommandLine(t *testing.T) {
	root := t.TempDir()
	tests := []struct {
		args     []string
		code     int
		stderrIn string
	}{
		{[]string{"shims", "--all"}, exitUsage, "go with `shims upgrade`"},
		{[]string{"shims", "upgrade"}, exitUsage, "missing GROUP"},
		{[]string{"shims", "upgrade", "--all", "pod1"}, exitUsage, "either --all or GROUP"},
		{[]string{"shims", "upgrade", "pod1", "--binary", "/x"}, exitError, `no container of group or name "pod1"`},
		{[]string{"shims", "upgrade", "--all"}, 0, ""},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		a := &app{stdout: &out, stderr: &errb, opts: &options{}}
		code := a.main(context.Background(), append([]string{"--root", root}, tc.args...))
		if code != tc.code || !strings.Contains(errb.String(), tc.stderrIn) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d with %q", tc.args, code, errb.String(), tc.code, tc.stderrIn)
		}
	}
}
