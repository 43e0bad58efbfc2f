package process

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// mountFlags maps mount(8) options to flags; set is false for options that
// clear a flag.
var mountFlags = map[string]struct {
	set  bool
	flag uintptr
}{
	"async":         {false, unix.MS_SYNCHRONOUS},
	"atime":         {false, unix.MS_NOATIME},
	"bind":          {true, unix.MS_BIND},
	"defaults":      {false, 0},
	"dev":           {false, unix.MS_NODEV},
	"diratime":      {false, unix.MS_NODIRATIME},
	"dirsync":       {true, unix.MS_DIRSYNC},
	"exec":          {false, unix.MS_NOEXEC},
	"mand":          {true, unix.MS_MANDLOCK},
	"noatime":       {true, unix.MS_NOATIME},
	"nodev":         {true, unix.MS_NODEV},
	"nodiratime":    {true, unix.MS_NODIRATIME},
	"noexec":        {true, unix.MS_NOEXEC},
	"nomand":        {false, unix.MS_MANDLOCK},
	"norelatime":    {false, unix.MS_RELATIME},
	"nostrictatime": {false, unix.MS_STRICTATIME},
	"nosuid":        {true, unix.MS_NOSUID},
	"rbind":         {true, unix.MS_BIND | unix.MS_REC},
	"relatime":      {true, unix.MS_RELATIME},
	"remount":       {true, unix.MS_REMOUNT},
	"ro":            {true, unix.MS_RDONLY},
	"rw":            {false, unix.MS_RDONLY},
	"strictatime":   {true, unix.MS_STRICTATIME},
	"suid":          {false, unix.MS_NOSUID},
	"sync":          {true, unix.MS_SYNCHRONOUS},
}

// parseMountOptions splits options into flags and the data string passed
// to the filesystem.
func parseMountOptions(options []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range options {
		if f, ok := mountFlags[o]; ok {
			if f.set {
				flags |= f.flag
			} else {
				flags &^= f.flag
			}
			continue
		}
		data = append(data, o)
	}
	return flags, strings.Join(data, ",")
}

// MountRootfs mounts containerd's rootfs mounts, in order, onto target.
// On failure what was mounted is unmounted again.
func MountRootfs(mounts []*types.Mount, target string) (retErr error) {
	done := 0
	defer func() {
		if retErr != nil && done > 0 {
			_ = UnmountAll(target)
		}
	}()
	for _, m := range mounts {
		if m == nil {
			continue
		}
		if m.Type == "" && m.Source == "" {
			return fmt.Errorf("rootfs mount %d has neither type nor source: %w", done, errdefs.ErrInvalidArgument)
		}
		flags, data := parseMountOptions(m.Options)
		typ := m.Type
		if flags&unix.MS_BIND != 0 {
			typ = ""
		}
		if err := unix.Mount(m.Source, target, typ, flags&^unix.MS_RDONLY|maybeRO(flags, typ), data); err != nil {
			return fmt.Errorf("mounting %s %q on %q (options %v): %w", m.Type, m.Source, target, m.Options, err)
		}
		done++
		// A bind mount ignores MS_RDONLY on the first call: remount it.
		if flags&unix.MS_BIND != 0 && flags&unix.MS_RDONLY != 0 {
			if err := unix.Mount("", target, "", flags|unix.MS_REMOUNT, ""); err != nil {
				return fmt.Errorf("remounting %q read-only: %w", target, err)
			}
		}
	}
	return nil
}

func maybeRO(flags uintptr, typ string) uintptr {
	if typ == "" {
		return 0
	}
	return flags & unix.MS_RDONLY
}

// UnmountAll unmounts everything stacked on target (lazily, so a busy
// mount does not fail Delete). A target that does not exist is fine.
func UnmountAll(target string) error {
	for i := 0; i < 64; i++ {
		err := unix.Unmount(target, unix.MNT_DETACH)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		default:
			if _, serr := os.Stat(target); os.IsNotExist(serr) {
				return nil
			}
			return fmt.Errorf("unmounting %q: %w", target, err)
		}
	}
	return fmt.Errorf("unmounting %q: still mounted after 64 unmounts", target)
}
