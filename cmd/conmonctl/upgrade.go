package main

import (
	"context"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/containerd/errdefs"
)

// shimsArgs is what `shims` was asked: the listing, or a live upgrade.
type shimsArgs struct {
	upgrade bool
	// binary is the new shim binary, absolute ("" = each shim's own
	// binary as it is now on disk).
	binary string
	all    bool
	// targets are groups (as `shims` lists them) or container names.
	targets []string
}

// parseShimsArgs checks the arguments of `shims` (after its flags):
// none for the listing, or `upgrade` and either GROUP... or --all. A
// relative --binary is made absolute from wd, since the shim checks an
// absolute path.
func parseShimsArgs(args []string, binary string, all bool, wd string) (shimsArgs, error) {
	if len(args) == 0 {
		if binary != "" || all {
			return shimsArgs{}, usagef("--binary and --all go with `shims upgrade`")
		}
		return shimsArgs{}, nil
	}
	if args[0] != "upgrade" {
		return shimsArgs{}, usagef("unknown shims subcommand %q (want upgrade, or no argument for the list)", args[0])
	}
	sa := shimsArgs{upgrade: true, all: all, targets: args[1:]}
	switch {
	case all && len(sa.targets) > 0:
		return shimsArgs{}, usagef("either --all or GROUP, not both")
	case !all && len(sa.targets) == 0:
		return shimsArgs{}, usagef("missing GROUP (or --all)")
	}
	for _, t := range sa.targets {
		if t == "" {
			return shimsArgs{}, usagef("empty GROUP")
		}
	}
	if binary != "" && !filepath.IsAbs(binary) {
		binary = filepath.Join(wd, binary)
	}
	sa.binary = binary
	return sa, nil
}

// upgradeEntry is one line of `shims upgrade`; its JSON names are a
// contract.
type upgradeEntry struct {
	Pid     uint32 `json:"pid"`
	Group   string `json:"group"`
	Address string `json:"address"`
	Binary  string `json:"binary,omitempty"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

// cmdShimsUpgrade hands each selected shim over to the new binary in
// place, one after the other, and waits each time until the new binary
// answers. A shim whose upgrade fails keeps serving with its old binary,
// so every shim is tried and every failure reported.
func cmdShimsUpgrade(ctx context.Context, a *app, sa shimsArgs) error {
	recs, err := a.store().list()
	if err != nil {
		return err
	}
	// One record per shim address, in the store's order.
	var shims []*record
	seen := map[string]bool{}
	matched := map[string]bool{}
	for _, r := range recs {
		hit := sa.all
		for _, t := range sa.targets {
			if r.Group == t || r.Name == t || r.ID == t {
				matched[t] = true
				hit = true
			}
		}
		if hit && !seen[r.Address] {
			seen[r.Address] = true
			shims = append(shims, r)
		}
	}
	for _, t := range sa.targets {
		if !matched[t] {
			return fmt.Errorf("no container of group or name %q: %w", t, errdefs.ErrNotFound)
		}
	}
	entries := make([]upgradeEntry, 0, len(shims))
	failed := 0
	for _, r := range shims {
		e := upgradeShim(ctx, a, r, sa.binary)
		if e.Error != "" {
			failed++
			if !a.json {
				fmt.Fprintf(a.stderr, "conmonctl: shim of group %s (%s): %s\n", r.Group, r.Address, e.Error)
			}
		}
		entries = append(entries, e)
	}
	if a.json {
		if err := printJSON(a, entries); err != nil {
			return err
		}
	} else {
		w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "PID\tGROUP\tVERSION\tBINARY")
		for _, e := range entries {
			if e.Error == "" {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", e.Pid, truncate(e.Group, 32), e.Version, e.Binary)
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return exitCode(exitError)
	}
	return nil
}

// upgradeTimeout bounds one shim's handover, from the request until the
// new binary answers: the shim first finishes the requests in flight.
const upgradeTimeout = 2 * time.Minute

// upgradeShim upgrades the shim of r and reports the outcome.
func upgradeShim(ctx context.Context, a *app, r *record, binary string) upgradeEntry {
	e := upgradeEntry{Group: r.Group, Address: r.Address}
	fail := func(err error) upgradeEntry {
		e.Error = cleanError(err)
		return e
	}
	s, err := a.connect(ctx, r)
	if err != nil {
		return fail(err)
	}
	defer s.Close()
	cctx, cancel := withTimeout(ctx)
	before, err := s.Info(cctx)
	cancel()
	if err != nil {
		return fail(err)
	}
	e.Pid, e.Group = before.Pid, before.Group
	cctx, cancel = withTimeout(ctx)
	e.Binary, err = s.Upgrade(cctx, binary)
	cancel()
	if err != nil {
		return fail(err)
	}
	wctx, cancel := context.WithTimeout(ctx, upgradeTimeout)
	defer cancel()
	after, err := s.WaitUpgraded(wctx, before)
	if err != nil {
		return fail(err)
	}
	e.Pid, e.Version = after.Pid, after.Version
	if after.Binary != "" {
		e.Binary = after.Binary
	}
	return e
}
