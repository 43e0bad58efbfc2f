package main

import (
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/binary"
	"github.com/containers/conmon-v2/logging/journald"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/k8sfile"
	"github.com/containers/conmon-v2/logging/passthrough"
	"github.com/containers/conmon-v2/reaper"
)

// registry returns the drivers of this build: k8s-file, json-file,
// journald, binary, passthrough and none. Without syslog and fluentd
// (crypto/tls) and plugin (ttrpc, protobuf) every monitor's package
// initialisation costs about 170 KiB less memory (docs/conmon.md);
// conmon-v2-full has them.
func registry(r *reaper.Reaper) *logging.Registry {
	reg := logging.NewRegistry()
	var runner binary.Runner
	if r != nil {
		runner = r
	}
	for _, e := range []struct {
		name string
		f    logging.Factory
	}{
		{k8sfile.Name, k8sfile.Factory},
		{jsonfile.Name, jsonfile.Factory},
		{journald.Name, journald.New},
		{passthrough.Name, passthrough.Factory},
		{passthrough.NoneName, passthrough.NoneFactory},
		{binary.Name, binary.NewFactory(binary.Config{Runner: runner})},
	} {
		if err := reg.Register(e.name, e.f); err != nil {
			panic(err)
		}
	}
	for _, a := range []string{"off", "null"} {
		if err := reg.Alias(a, passthrough.NoneName); err != nil {
			panic(err)
		}
	}
	return reg
}
