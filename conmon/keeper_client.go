package conmon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// KeeperSocket returns the exit keeper's socket the configuration file
// names ([conmon] exit-keeper), or "" (the default: no keeper). The file is
// the one the [logging] table comes from (EnvConfig, else
// logging.DefaultConfigPath, which may be missing).
func KeeperSocket() (string, error) {
	path, explicit := os.LookupEnv(EnvConfig)
	if !explicit || path == "" {
		path = logging.DefaultConfigPath
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("configuration file %s (%s): %w", path, EnvConfig, err)
	}
	return parseKeeperSocket(path, data)
}

func parseKeeperSocket(path string, data []byte) (string, error) {
	var doc struct {
		Conmon struct {
			ExitKeeper string `toml:"exit-keeper"`
		} `toml:"conmon"`
	}
	if _, err := toml.Decode(string(data), &doc); err != nil {
		return "", fmt.Errorf("%s: %v: %w", path, err, errdefs.ErrInvalidArgument)
	}
	s := doc.Conmon.ExitKeeper
	if s != "" && !filepath.IsAbs(s) {
		return "", fmt.Errorf("%s: [conmon] exit-keeper %q: must be an absolute path: %w", path, s, errdefs.ErrInvalidArgument)
	}
	return s, nil
}

// DaemonizeViaKeeper is Daemonize with the exit keeper at socket starting
// the monitor (as its child, so that the container outlives a killed
// monitor under a subreaper that writes its exit files): the same
// arguments, environment, working directory and fds, sent over the socket.
// It writes the monitor's pid to the conmon pid file, then, best effort,
// moves the monitor into this process's cgroups (where the caller put the
// monitor-to-be during the start-pipe window).
func DaemonizeViaKeeper(socket string, cfg *Config, logs *LogSettings, b *Bootstrap, oldScore string) error {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	dir, _ := os.Getwd()
	req := keeperRequest{Op: keeperOpSpawn, Args: os.Args, Env: monitorEnv(logs, oldScore), Dir: dir}
	var fds []int
	for n := 0; n < 3; n++ {
		fd := int(devnull.Fd())
		if cfg.Passthru {
			fd = n
		}
		req.FDs, fds = append(req.FDs, n), append(fds, fd)
	}
	for _, fd := range monitorFDs(b) {
		req.FDs, fds = append(req.FDs, fd), append(fds, fd)
	}
	rep, err := keeperCall(socket, &req, fds, 10*time.Second)
	if err != nil {
		return err
	}
	if cfg.ConmonPidfile != "" {
		if err := WriteFileAtomic(cfg.ConmonPidfile, []byte(strconv.Itoa(rep.Pid)), 0o666); err != nil {
			return err
		}
	}
	joinOwnCgroups(rep.Pid)
	return nil
}

// errKeeperUnreachable marks a keeper that could not be connected to:
// nothing was sent.
var errKeeperUnreachable = errors.New("not listening")

// errKeeperRefused marks a request the keeper answered with an error: it
// did nothing (a spawn request started no monitor).
var errKeeperRefused = errors.New("refused")

// keeperCall sends one request (with fds) to the keeper and returns its
// reply; a reply with an error is an error.
func keeperCall(socket string, req *keeperRequest, fds []int, timeout time.Duration) (*keeperReply, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("unixpacket", socket)
	if err != nil {
		return nil, fmt.Errorf("exit keeper %s: %w: %v", socket, errKeeperUnreachable, err)
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(timeout))
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := uc.WriteMsgUnix(data, oob, nil); err != nil {
		return nil, fmt.Errorf("exit keeper %s: %s: %w", socket, req.Op, err)
	}
	buf := make([]byte, 4096)
	n, err := uc.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("exit keeper %s: %s: reply: %w", socket, req.Op, err)
	}
	var rep keeperReply
	if err := json.Unmarshal(buf[:n], &rep); err != nil {
		return nil, fmt.Errorf("exit keeper %s: %s: reply: %v", socket, req.Op, err)
	}
	if rep.Error != "" {
		return nil, fmt.Errorf("exit keeper %s: %w: %s", socket, errKeeperRefused, rep.Error)
	}
	return &rep, nil
}

// joinOwnCgroups writes pid into every cgroup this process is in (v1
// hierarchies under /sys/fs/cgroup/<controllers>, the v2 one at
// /sys/fs/cgroup/unified or /sys/fs/cgroup). Failures are ignored: the
// monitor then stays in the keeper's cgroup, which only changes where its
// memory is accounted.
func joinOwnCgroups(pid int) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var dirs []string
		switch ctrl := parts[1]; {
		case ctrl == "":
			dirs = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}
		case strings.HasPrefix(ctrl, "name="):
			dirs = []string{"/sys/fs/cgroup/" + strings.TrimPrefix(ctrl, "name=")}
		default:
			dirs = []string{"/sys/fs/cgroup/" + ctrl}
		}
		for _, d := range dirs {
			procs := filepath.Join(d, parts[2], "cgroup.procs")
			if _, err := os.Stat(procs); err != nil {
				continue
			}
			_ = os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0)
			break
		}
	}
}

// keeperLink is a monitor's line to the keeper that started it; nil (the
// default: no keeper) reports nothing.
type keeperLink struct {
	socket string
	diag   *Diag
}

// newKeeperLink returns the link to the keeper named in the environment
// (EnvKeeper, set by the keeper for the monitors it starts), or nil.
func newKeeperLink(socket string, diag *Diag) *keeperLink {
	if socket == "" {
		return nil
	}
	return &keeperLink{socket: socket, diag: diag}
}

func (l *keeperLink) send(op string, pid, status int) {
	if l == nil {
		return
	}
	if _, err := keeperCall(l.socket, &keeperRequest{Op: op, Pid: pid, Status: status}, nil, 5*time.Second); err != nil {
		l.diag.Warnf("%v", err)
	}
}

// Container reports the container's pid: from now on a killed monitor
// leaves the container to the keeper.
func (l *keeperLink) Container(pid int) { l.send(keeperOpContainer, pid, 0) }

// Exited reports the container's exit status as soon as it is reaped.
func (l *keeperLink) Exited(status int) { l.send(keeperOpExited, 0, status) }

// Done reports that the exit files are written.
func (l *keeperLink) Done() { l.send(keeperOpDone, 0, 0) }
