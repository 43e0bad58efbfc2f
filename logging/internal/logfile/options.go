package logfile

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containers/conmon-v2/logging"
)

// FromInfo reads the common file options of a driver's Info (see
// logging.CommonOptions). defaultName is the file name used under Info.Dir
// when no path is given; own lists the driver's own option keys, which
// FromInfo leaves to the driver. Bad values fail with ErrInvalidArgument
// naming the option.
func FromInfo(driver string, info logging.Info, defaultName string, own ...string) (Options, error) {
	o := Options{Fsync: logging.FsyncExit}
	bad := func(k, why string) error {
		return fmt.Errorf("log driver %s: option %s=%q: %s: %w", driver, k, info.Options[k], why, errdefs.ErrInvalidArgument)
	}
	var err error
	for k, v := range info.Options {
		switch k {
		case logging.OptPath:
			o.Path = v
		case logging.OptMaxSize:
			if o.MaxSize, err = logging.ParseSize(v); err != nil {
				return o, bad(k, err.Error())
			}
		case logging.OptMaxFiles:
			if o.MaxFiles, err = strconv.Atoi(v); err != nil || o.MaxFiles < 0 {
				return o, bad(k, "want a non-negative integer")
			}
		case logging.OptCompress:
			if o.Compress, err = strconv.ParseBool(v); err != nil {
				return o, bad(k, "want true or false")
			}
		case logging.OptTruncate:
			if o.Truncate, err = strconv.ParseBool(v); err != nil {
				return o, bad(k, "want true or false")
			}
		case logging.OptGlobalSizeMax:
			if o.GlobalSizeMax, err = logging.ParseSize(v); err != nil {
				return o, bad(k, err.Error())
			}
		case logging.OptFsync:
			switch v {
			case logging.FsyncNone, logging.FsyncExit, logging.FsyncInterval:
				o.Fsync = v
			default:
				return o, bad(k, "want none, exit or interval")
			}
		case logging.OptFsyncInterval:
			if o.FsyncInterval, err = time.ParseDuration(v); err != nil || o.FsyncInterval <= 0 {
				return o, bad(k, "want a positive duration")
			}
		default:
			if slices.Contains(own, k) {
				continue
			}
			return o, fmt.Errorf("log driver %s: unknown option %q: %w", driver, k, errdefs.ErrInvalidArgument)
		}
	}
	if o.Path == "" {
		if info.Dir == "" {
			return o, fmt.Errorf("log driver %s requires a path (option path): %w", driver, errdefs.ErrInvalidArgument)
		}
		o.Path = filepath.Join(info.Dir, defaultName)
	}
	if o.MaxSize > 0 && o.MaxFiles == 0 && !o.Truncate {
		// Rotation, not conmon's truncation, unless asked (conmon#211).
		o.MaxFiles = DefaultMaxFiles
	}
	return o, nil
}

// DefaultMaxFiles is the number of kept files when max-size is set without
// max-files.
const DefaultMaxFiles = 5
