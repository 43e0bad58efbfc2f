//go:build tools

// Package deps pins the modules the project builds on, so that `go mod
// vendor` keeps them even while a package that uses them is being written.
// It is never compiled into a binary.
package deps

import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/containerd/cgroups/v3/cgroup1"
	_ "github.com/containerd/cgroups/v3/cgroup1/stats"
	_ "github.com/containerd/cgroups/v3/cgroup2"
	_ "github.com/containerd/cgroups/v3/cgroup2/stats"
	_ "github.com/containerd/console"
	_ "github.com/containerd/containerd/api/events"
	_ "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	_ "github.com/containerd/containerd/api/runtime/task/v2"
	_ "github.com/containerd/containerd/api/runtime/task/v3"
	_ "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	_ "github.com/containerd/containerd/api/types"
	_ "github.com/containerd/containerd/api/types/runc/options"
	_ "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	_ "github.com/containerd/containerd/api/types/task"
	_ "github.com/containerd/errdefs"
	_ "github.com/containerd/errdefs/pkg/errgrpc"
	_ "github.com/containerd/fifo"
	_ "github.com/containerd/go-runc"
	_ "github.com/containerd/ttrpc"
	_ "github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc"
	_ "github.com/containerd/typeurl/v2"
	_ "github.com/fluent/fluent-logger-golang/fluent"
	_ "github.com/opencontainers/runtime-spec/specs-go"
	_ "github.com/vmihailenco/msgpack/v5"
	_ "golang.org/x/sys/unix"
	_ "gonum.org/v1/plot"
	_ "gonum.org/v1/plot/plotter"
	_ "gonum.org/v1/plot/vg"
	_ "gonum.org/v1/plot/vg/vgsvg"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
	_ "google.golang.org/protobuf/proto"
	_ "google.golang.org/protobuf/types/known/anypb"
	_ "google.golang.org/protobuf/types/known/emptypb"
	_ "google.golang.org/protobuf/types/known/timestamppb"
)
