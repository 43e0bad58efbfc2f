package conmon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Environment variables through which the caller hands conmon its pipes.
const (
	EnvSyncPipe   = "_OCI_SYNCPIPE"
	EnvStartPipe  = "_OCI_STARTPIPE"
	EnvAttachPipe = "_OCI_ATTACHPIPE"
)

// PipeFD returns the fd number named by env variable name, -1 when it is
// not set. A value that is not a plain decimal number is an error, as in
// conmon ("unable to parse _OCI_SYNCPIPE").
func PipeFD(name string) (int, error) {
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return -1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return -1, fmt.Errorf("unable to parse %s: %w", name, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// SyncKey returns the JSON key of sync-pipe messages: "data" with
// --api-version, "exit_code" for a legacy exec, "pid" otherwise.
func SyncKey(o *Options) string {
	switch {
	case o.APIVersion > 0:
		return "data"
	case o.Exec:
		return "exit_code"
	}
	return "pid"
}

// SyncMessage renders one sync-pipe message exactly as conmon does:
// `{"<key>": <n>}\n`, or with `, "message": "<escaped>"` when msg is
// non-empty.
func SyncMessage(key string, n int, msg string) []byte {
	b := make([]byte, 0, 32+len(msg))
	b = append(b, `{"`...)
	b = append(b, key...)
	b = append(b, `": `...)
	b = strconv.AppendInt(b, int64(n), 10)
	if msg != "" {
		b = append(b, `, "message": "`...)
		b = appendEscaped(b, msg)
		b = append(b, '"')
	}
	return append(b, "}\n"...)
}

// appendEscaped escapes like conmon's sync-pipe writer: backslash, quote,
// \n and \t by name, other bytes 0x01-0x1e and 0x7f as \u00XX, everything
// else (0x1f and bytes >= 0x80 included) raw.
func appendEscaped(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			b = append(b, '\\', '\\')
		case c == '"':
			b = append(b, '\\', '"')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\t':
			b = append(b, '\\', 't')
		case (c >= 0x01 && c <= 0x1e) || c == 0x7f:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return b
}

// writeAll writes b to fd, retrying on EINTR and short writes.
func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename, so readers (and inotify watchers of the
// directory) only ever see the complete file.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, base+".")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm &^ currentUmask())
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func currentUmask() os.FileMode {
	// conmon sets umask 0022 at start; the monitor does the same.
	return 0o022
}

// readPidfile reads a decimal pid written by the runtime.
func readPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s: bad content %q: %w", path, b, errdefs.ErrInvalidArgument)
	}
	return pid, nil
}
