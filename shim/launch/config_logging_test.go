package launch

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestConfigLoggingTable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    string
		wantErr string // substring; empty: must parse
		check   func(t *testing.T, c Config)
	}{
		{
			name: "no table gives the logging defaults",
			text: "grouping = \"pod\"\n",
			check: func(t *testing.T, c Config) {
				lc, err := c.LoggingConfig()
				if err != nil {
					t.Fatal(err)
				}
				if len(lc.Drivers) == 0 {
					t.Fatalf("default logging config has no driver")
				}
			},
		},
		{
			name: "table sets the defaults and survives Encode",
			text: "grouping = \"namespace\"\n[logging]\ndrivers = [\"json-file\"]\nmax-size = \"1MiB\"\n",
			check: func(t *testing.T, c Config) {
				lc, err := c.LoggingConfig()
				if err != nil {
					t.Fatal(err)
				}
				if len(lc.Drivers) != 1 || lc.Drivers[0] != "json-file" {
					t.Fatalf("drivers %v, want [json-file]", lc.Drivers)
				}
				again, err := ParseConfig("encoded", c.Encode())
				if err != nil {
					t.Fatalf("re-parse of Encode: %v", err)
				}
				lc2, err := again.LoggingConfig()
				if err != nil {
					t.Fatal(err)
				}
				if len(lc2.Drivers) != 1 || lc2.Drivers[0] != "json-file" {
					t.Fatalf("after Encode: drivers %v, want [json-file]", lc2.Drivers)
				}
			},
		},
		{
			name:    "bad logging key is refused naming it",
			text:    "[logging]\nno-such-option = 1\n",
			wantErr: "no-such-option",
		},
		{
			name:    "bad driver is refused naming it",
			text:    "[logging]\ndrivers = [\"nosuchdriver\"]\nmax-size = \"banana\"\n",
			wantErr: "max-size",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig("test.toml", []byte(tc.text))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("parsed, want an error naming %q", tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) || !errdefs.IsInvalidArgument(err) {
					t.Fatalf("error %v, want InvalidArgument naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
