// Package conmon is conmon-v2's own ttrpc API (service conmon.v1.Monitor),
// served by every shim on the socket of its task service: Info describes the
// shim process, List the tasks it serves, and Subscribe streams its events to
// clients that run without containerd (conmonctl, the Go client).
//
// monitor.pb.go and monitor_ttrpc.pb.go are generated from monitor.proto by
// `make protos`; edit the .proto, never the generated files.
package conmon
