package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containers/conmon-v2/shim/launch"
)

// RuntimeName is the containerd runtime name that resolves to this shim.
const RuntimeName = "io.containerd.conmon.v2"

// featuresTypeURL is the type URL containerd registers for the OCI
// runtime-spec features document (a JSON value).
const featuresTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"

// Info answers `-info` (containerd 2.x): it reads optional runtime options
// (an Any) from stdin and prints a containerd.types.RuntimeInfo. The OCI
// runtime's `features` document is included when the runtime provides one.
func Info(ctx context.Context, version string, stdin io.Reader, stdout io.Writer, flagConfig string) error {
	data, err := io.ReadAll(stdin)
	if err != nil {
		return fmt.Errorf("info: read stdin: %w", err)
	}
	var opts *anypb.Any
	if len(data) > 0 {
		opts = &anypb.Any{}
		if err := proto.Unmarshal(data, opts); err != nil {
			return fmt.Errorf("info: stdin is not runtime options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	var resolveOpts *launch.Options
	if opts != nil {
		resolveOpts = &launch.Options{TypeURL: opts.GetTypeUrl(), Value: opts.GetValue()}
	}
	cfg, err := launch.ResolveConfig(resolveOpts, flagConfig)
	if err != nil {
		return err
	}
	info := &apitypes.RuntimeInfo{
		Name:    RuntimeName,
		Version: &apitypes.RuntimeVersion{Version: version},
		Options: opts,
	}
	if f := runtimeFeatures(ctx, cfg.Runtime); f != nil {
		info.Features = &anypb.Any{TypeUrl: featuresTypeURL, Value: f}
	}
	b, err := proto.Marshal(info)
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

// runtimeFeatures returns `<runtime> features` if it is valid JSON.
func runtimeFeatures(ctx context.Context, runtime string) []byte {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, runtime, "features").Output()
	if err != nil || !json.Valid(out) {
		return nil
	}
	return out
}
