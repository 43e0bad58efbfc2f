package main

import (
	"reflect"
	"strings"
	"testing"
)

// spec renders one ginkgo SpecReport as JSON.
func spec(container, leaf, state, failure string) string {
	s := `{"ContainerHierarchyTexts":["` + container + `"],"LeafNodeType":"It","LeafNodeText":"` + leaf +
		`","State":"` + state + `","RunTime":1500000000`
	if failure != "" {
		s += `,"Failure":{"Message":"` + failure + `"}`
	}
	return s + "}"
}

func report(specs ...string) string {
	return `[{"SpecReports":[{"LeafNodeType":"BeforeSuite","State":"passed"},` + strings.Join(specs, ",") + `]}]`
}

func TestLoad(t *testing.T) {
	r, err := load("runc", strings.NewReader(report(
		spec("Pod", "runs", "passed", ""),
		spec("Pod", "stops", "failed", `boom\nstack`),
		spec("Pod", "runs", "skipped", "not here"),
	)))
	if err != nil {
		t.Fatal(err)
	}
	want := []result{
		{Name: "Pod :: runs", State: "passed", Seconds: 1.5},
		{Name: "Pod :: stops", State: "failed", Seconds: 1.5, Reason: "boom stack"},
		{Name: "Pod :: runs #2", State: "skipped", Seconds: 1.5, Reason: "not here"},
	}
	if !reflect.DeepEqual(r.Results, want) {
		t.Fatalf("got %+v\nwant %+v", r.Results, want)
	}
	if p, f, s := r.counts(); p != 1 || f != 1 || s != 1 {
		t.Fatalf("counts %d/%d/%d, want 1/1/1", p, f, s)
	}
}

func TestLoadErrors(t *testing.T) {
	for _, in := range []string{"", "{", `[{"SpecReports":[]}]`, `{"SpecReports":[]}`} {
		if _, err := load("h", strings.NewReader(in)); err == nil {
			t.Errorf("load(%q): no error", in)
		}
	}
}

func TestRegressions(t *testing.T) {
	mk := func(states ...string) run {
		var r run
		for i, s := range states {
			r.Results = append(r.Results, result{Name: string(rune('a' + i)), State: s})
		}
		return r
	}
	for _, tc := range []struct {
		name       string
		base, cand run
		want       []string
	}{
		{"same", mk("passed", "failed"), mk("passed", "failed"), nil},
		{"candidate better", mk("failed", "skipped"), mk("passed", "passed"), nil},
		{"failed", mk("passed", "passed"), mk("passed", "failed"), []string{"b"}},
		{"skipped", mk("passed"), mk("skipped"), []string{"a"}},
		{"missing", mk("passed", "passed"), mk("passed"), []string{"b"}},
		{"timed out", mk("passed"), mk("timedout"), []string{"a"}},
	} {
		if got := regressions(tc.base, tc.cand); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestHandlerFile(t *testing.T) {
	for _, tc := range []struct {
		in      string
		h, f    string
		wantErr bool
	}{
		{"runc=a.json", "runc", "a.json", false},
		{"conmon-v2=x=y", "conmon-v2", "x=y", false},
		{"a.json", "", "", true},
		{"=a.json", "", "", true},
		{"runc=", "", "", true},
	} {
		h, f, err := handlerFile("baseline", tc.in)
		if (err != nil) != tc.wantErr || h != tc.h || f != tc.f {
			t.Errorf("handlerFile(%q) = %q, %q, %v", tc.in, h, f, err)
		}
	}
}
