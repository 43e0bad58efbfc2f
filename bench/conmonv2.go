package bench

import (
	"fmt"
	"os"
	"path/filepath"
)

// configureConmonShim writes a configuration file for conmon-v2's shim
// (shim.Config, TOML) and passes it with -config to every `start`:
// grouping is "pod" (sandbox-id annotation, else one daemon per
// container) or "namespace" (the dense mode: one daemon per containerd
// namespace, here one per node). The runtime root, state and sockets go
// under the run's scratch directory, so that the final sweep finds them.
func configureConmonShim(env *Env, s *shimSystem, grouping string) error {
	path := filepath.Join(env.Dir, s.prefix+"-shim.toml")
	cfg := fmt.Sprintf("grouping = %q\nruntime = %q\nruntime_root = %q\nstate_dir = %q\nsocket_dir = %q\n",
		grouping, env.Runc, env.ShimRuncRoot(), filepath.Join(env.Dir, s.prefix+"-state"), filepath.Join(env.Dir, "s"))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return err
	}
	s.startArgs = append(s.startArgs, "-config", path)
	return nil
}
