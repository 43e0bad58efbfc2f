package launch

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestLimitsConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    string
		wantErr string // substring; empty: must parse
		want    Limits
	}{
		{name: "defaults", text: "", want: DefaultLimits()},
		{
			name: "table sets every key",
			text: "[limits]\nrequests = 8\nqueue = 0\nqueue_timeout = \"2s\"\nwaits = 100\nrequests_per_connection = 64\n",
			want: Limits{Requests: 8, Queue: 0, QueueTimeout: 2 * time.Second, Waits: 100, RequestsPerConnection: 64},
		},
		{name: "a key alone keeps the other defaults", text: "[limits]\nwaits = 7\n", want: func() Limits { l := DefaultLimits(); l.Waits = 7; return l }()},
		{name: "zero requests", text: "[limits]\nrequests = 0\n", wantErr: "[limits] requests = 0"},
		{name: "negative queue", text: "[limits]\nqueue = -1\n", wantErr: "[limits] queue = -1"},
		{name: "huge waits", text: "[limits]\nwaits = 100000000\n", wantErr: "[limits] waits = 100000000"},
		{name: "zero per connection", text: "[limits]\nrequests_per_connection = 0\n", wantErr: "requests_per_connection"},
		{name: "negative timeout", text: "[limits]\nqueue_timeout = \"-1s\"\n", wantErr: "queue_timeout"},
		{name: "bad timeout", text: "[limits]\nqueue_timeout = \"soon\"\n", wantErr: "soon"},
		{name: "unknown key", text: "[limits]\nconnections = 3\n", wantErr: "limits.connections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig("test", []byte(tc.text))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("err = %v, want InvalidArgument naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Limits != tc.want {
				t.Fatalf("limits %+v, want %+v", c.Limits, tc.want)
			}
			again, err := ParseConfig("encoded", c.Encode())
			if err != nil || again.Limits != c.Limits {
				t.Fatalf("after Encode: %+v, %v", again.Limits, err)
			}
		})
	}
}
