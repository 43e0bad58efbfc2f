package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
)

func TestLogStatsUsage(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"logs", "--stats"}, "missing container NAME"},
		{[]string{"logs", "--stats", "-f", "web"}, "--stats takes no"},
		{[]string{"logs", "--stats", "--tail", "3", "web"}, "--stats takes no"},
		{[]string{"logs", "--stats", "a", "b"}, "too many arguments"},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		a := &app{stdout: &out, stderr: &errb, opts: &options{}, root: t.TempDir()}
		if code := a.main(context.Background(), tc.args); code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, %q; want usage error with %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

func TestLogEventSummary(t *testing.T) {
	ev := &conmonapi.LogDriverEvent{ContainerId: "c1", Driver: "k8s-file", Error: "write: no space left on device",
		Errors: &conmonapi.LogCounter{Lines: 3}, Lost: &conmonapi.LogCounter{Lines: 2}}
	if got := containerOf(ev); got != "c1" {
		t.Errorf("containerOf = %q", got)
	}
	want := `driver=k8s-file failed_lines=3 lost_lines=2 error="write: no space left on device"`
	if got := eventSummary(ev); got != want {
		t.Errorf("eventSummary = %s, want %s", got, want)
	}
}
