package pipesize

import "testing"

func TestIdentityIDMap(t *testing.T) {
	for _, tc := range []struct {
		m    string
		want bool
	}{
		{"         0          0 4294967295\n", true},
		{"0 0 4294967295", true},
		{"         0       1000          1\n         1     100000      65536\n", false}, // rootless
		{"         0     100000      65536\n", false},
		{"         0          0 4294967294\n", false},
		{"", false},
	} {
		if got := identityIDMap([]byte(tc.m)); got != tc.want {
			t.Errorf("identityIDMap(%q) = %v, want %v", tc.m, got, tc.want)
		}
	}
}

func TestDecide(t *testing.T) {
	const (
		initNS   = "         0          0 4294967295\n"
		rootless = "         0       1000          1\n         1     100000      65536\n"
		admin    = uint64(1) << capSysAdmin
		resource = uint64(1) << capSysResource
		others   = ^(admin | resource) // every capability but the two
	)
	for _, tc := range []struct {
		name string
		f    Facts
		want bool
	}{
		{"root, all caps", Facts{UIDMap: []byte(initNS), CapEff: ^uint64(0), SoftPages: 16384}, true},
		{"root, CAP_SYS_ADMIN only (this CI machine)", Facts{UIDMap: []byte(initNS), CapEff: others&^resource | admin, SoftPages: 16384}, true},
		{"root, CAP_SYS_RESOURCE only", Facts{UIDMap: []byte(initNS), CapEff: resource, SoftPages: 16384}, true},
		{"root, neither", Facts{UIDMap: []byte(initNS), CapEff: others, SoftPages: 16384}, false},
		{"rootless, all caps in its namespace", Facts{UIDMap: []byte(rootless), CapEff: ^uint64(0), SoftPages: 16384}, false},
		{"rootless, no caps", Facts{UIDMap: []byte(rootless), SoftPages: 16384}, false},
		{"uid_map unreadable", Facts{CapEff: ^uint64(0), SoftPages: 16384}, false},
		{"rootless, limits off", Facts{UIDMap: []byte(rootless), SoftPages: 0, HardPages: 0}, true},
		{"rootless, hard limit only", Facts{UIDMap: []byte(rootless), SoftPages: 0, HardPages: 32768}, false},
		{"rootless, sysctls unreadable", Facts{UIDMap: []byte(rootless), SoftPages: -1, HardPages: -1}, false},
		{"root, sysctls unreadable", Facts{UIDMap: []byte(initNS), CapEff: admin, SoftPages: -1, HardPages: -1}, true},
		{"root, the initial namespace's inode", Facts{UIDMap: []byte(initNS), CapEff: admin, SoftPages: 16384, UserNS: initUserNS}, true},
		{"identity map in a child namespace, all caps there", Facts{UIDMap: []byte(initNS), CapEff: ^uint64(0), SoftPages: 16384, UserNS: 4026532123}, false},
		{"child namespace, limits off", Facts{UIDMap: []byte(initNS), SoftPages: 0, HardPages: 0, UserNS: 4026532123}, true},
	} {
		if got := Decide(tc.f); got != tc.want {
			t.Errorf("%s: Decide(%+v) = %v, want %v", tc.name, tc.f, got, tc.want)
		}
	}
}
