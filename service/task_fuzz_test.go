package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/process"
)

// FuzzTaskRequests drives the task API past the ttrpc decoder with what a
// client controls: the task and exec IDs, the bundle's config.json (with
// its log annotations), runtime options, an exec's process spec, Update's
// resources, a signal and a pty size. The runtime is a fake (rootfs mounts
// and stdio are left out: they touch the machine and are fuzzed through
// process.ParseStdio). Nothing may panic (a recovered panic is an Internal
// error), every refusal is classified, and the service still creates and
// deletes a well-formed task afterwards.
func FuzzTaskRequests(f *testing.F) {
	spec, _ := json.Marshal(specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"/bin/sh"}}})
	annotated, _ := json.Marshal(specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"sh"}, User: specs.User{UID: 1000}},
		Annotations: map[string]string{logging.AnnotationPrefix + "mode": "non-blocking", logging.AnnotationPrefix + "max-size": "x"},
		Linux:       &specs.Linux{UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}}})
	proc, _ := json.Marshal(specs.Process{Args: []string{"/bin/true"}, Terminal: true})
	res, _ := json.Marshal(specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: new(uint64)}})
	opts, _ := proto.Marshal(&options.Options{NoPivotRoot: true, IoUid: 1, IoGid: 2})
	f.Add("c1", spec, opts, "e1", proc, res, uint32(9), false, uint32(80))
	f.Add("c-2.x", annotated, []byte{0xff, 0x01}, "..", []byte("{"), []byte("null"), uint32(0), true, uint32(0))
	f.Add("../x", []byte("null"), []byte(nil), "", []byte(`{"args":null,"user":{"uid":4294967295}}`), []byte(`{"memory":{"limit":-1}}`), uint32(1<<31), false, uint32(65535))
	f.Add("c3", []byte(`{"process":null,"linux":{"uidMappings":[{"containerID":4294967295,"hostID":4294967295,"size":4294967295}]}}`), []byte{}, "e", []byte(`{}`), []byte(`{}`), uint32(64), true, uint32(1))
	f.Fuzz(func(t *testing.T, id string, config, runcOpts []byte, execID string, execSpec, resources []byte, sig uint32, terminal bool, size uint32) {
		watchdog := time.AfterFunc(8*time.Second, func() {
			panic(fmt.Sprintf("stuck: id %q config %q opts %x exec %q spec %q resources %q sig %d", id, config, runcOpts, execID, execSpec, resources, sig))
		})
		defer watchdog.Stop()
		dir := t.TempDir()
		exits := newFakeExits()
		s, err := newService(context.Background(), Config{
			Namespace: "fuzz",
			StateDir:  filepath.Join(dir, "state"),
			Runtime:   newFakeRuntime(),
			Log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
			// The annotations are parsed as the shim parses them; building
			// the drivers would let the fuzzer name log paths on this
			// machine.
			Logging: func(ctx context.Context, id, ns string, spec *specs.Spec) (process.Tap, error) {
				c := logging.DefaultConfig()
				if spec == nil {
					return nil, nil
				}
				if err := c.ApplyAnnotations(spec.Annotations); err != nil {
					return nil, err
				}
				_, err := c.PipelineOptions()
				return nil, err
			},
		}, exits, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.killPid = func(int, uint32) error { return nil }
		s.procCgroupFn = func(int) (string, error) { return "", nil }
		s.watchNewOOMFn = func(string, func(uint64)) (*process.OOMWatch, error) { return nil, errors.New("no cgroups in fuzzing") }
		s.watchOOMFn = func(int, func(uint64)) (*process.OOMWatch, error) { return nil, errors.New("no cgroups in fuzzing") }
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		check := func(what string, err error) {
			t.Helper()
			if errdefs.IsInternal(err) {
				t.Fatalf("%s: %v", what, err)
			}
		}
		bundle := filepath.Join(dir, "bundle")
		if err := os.MkdirAll(bundle, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), config, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = s.Create(ctx, &taskv2.CreateTaskRequest{ID: id, Bundle: bundle, // Terminal: the fake runtime sends no pty

			Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: runcOpts}})
		check("Create", err)
		_, err = s.Exec(ctx, &taskv2.ExecProcessRequest{ID: id, ExecID: execID,
			Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: execSpec}})
		check("Exec", err)
		_, err = s.ResizePty(ctx, &taskv2.ResizePtyRequest{ID: id, ExecID: execID, Width: size, Height: size >> 16})
		check("ResizePty", err)
		_, err = s.Update(ctx, &taskv2.UpdateTaskRequest{ID: id,
			Resources: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: resources}})
		check("Update", err)
		_, err = s.Kill(ctx, &taskv2.KillRequest{ID: id, ExecID: execID, Signal: sig, All: terminal})
		check("Kill", err)
		_, err = s.CloseIO(ctx, &taskv2.CloseIORequest{ID: id, ExecID: execID, Stdin: true})
		check("CloseIO", err)
		_, err = s.State(ctx, &taskv2.StateRequest{ID: id, ExecID: execID})
		check("State", err)
		_, err = s.Delete(ctx, &taskv2.DeleteRequest{ID: id, ExecID: execID})
		check("Delete exec", err)
		_, err = s.Delete(ctx, &taskv2.DeleteRequest{ID: id})
		check("Delete", err)

		// The service is still usable.
		good := filepath.Join(dir, "good")
		if err := os.MkdirAll(good, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(good, "config.json"), spec, 0o644); err != nil {
			t.Fatal(err)
		}
		gid := "fuzz-good"
		if id == gid {
			gid = "fuzz-good-2"
		}
		if _, err := s.Create(ctx, &taskv2.CreateTaskRequest{ID: gid, Bundle: good}); err != nil {
			t.Fatalf("a well-formed Create after the fuzzed requests: %v", err)
		}
		if _, err := s.Delete(ctx, &taskv2.DeleteRequest{ID: gid}); err != nil {
			t.Fatalf("Delete of the well-formed task: %v", err)
		}
	})
}
