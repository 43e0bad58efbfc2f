package client_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containers/conmon-v2/client"
)

// Run a container in its own shim, wait for it, read its exit code, and
// clean up. (Needs root, runc and a root filesystem; not run by go test.)
func Example() {
	ctx := context.Background()
	bundle := "/run/example/bundle"
	spec, err := client.NewSpec(client.SpecOpts{
		Rootfs:   "/var/lib/example/rootfs",
		Args:     []string{"sh", "-c", "echo hello"},
		Hostname: "c1",
		Annotations: map[string]string{
			client.GroupAnnotation:                "pod1",     // one shim for the group
			client.LogAnnotationPrefix + "driver": "k8s-file", // conmon-v2's log drivers
			client.LogAnnotationPrefix + "path":   "/var/log/example/c1.log",
		},
	})
	if err != nil {
		panic(err)
	}
	if err := client.WriteSpec(bundle, spec); err != nil {
		panic(err)
	}
	addr, err := client.StartShim(ctx, client.ShimOpts{Namespace: "example"}, "c1", bundle)
	if err != nil {
		panic(err)
	}
	shim, err := client.Connect(ctx, addr)
	if err != nil {
		panic(err)
	}
	defer shim.Close()

	// Attach the caller's stdout and stderr through fifos made here.
	fifos, _ := client.NewFIFOSet(filepath.Join("/run/example", "io"), "c1", false, true, true, false)
	stdio, err := client.OpenIO(ctx, fifos, client.Streams{Stdout: os.Stdout, Stderr: os.Stderr}, nil)
	if err != nil {
		panic(err)
	}
	defer stdio.Close()

	if _, err := shim.Create(ctx, client.CreateOpts{ID: "c1", Bundle: bundle, Stdio: fifos.Stdio}); err != nil {
		panic(err) // errdefs.IsInvalidArgument(err) etc. tell why
	}
	if _, err := shim.Start(ctx, "c1", ""); err != nil {
		panic(err)
	}
	exit, err := shim.Wait(ctx, "c1", "")
	if err != nil {
		panic(err)
	}
	fmt.Println("exit status", exit.Status)
	_, _ = shim.Delete(ctx, "c1", "")
	_ = shim.Shutdown(ctx, "c1", false) // the shim exits once it serves nothing
}
