package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// memUsage is what the kernel accounts to one process: proportional set
// size (shared pages divided among their sharers) and private dirty pages,
// the memory that would be freed if the process exited.
type memUsage struct {
	PSS          uint64 // bytes
	PrivateDirty uint64 // bytes
	RSS          uint64 // bytes
}

// readSmapsRollup reads /proc/PID/smaps_rollup. PSS is the figure that adds
// up across processes: N conmons sharing one libglib count it once in total.
func readSmapsRollup(pid int) (memUsage, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return memUsage{}, err
	}
	var m memUsage
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "Pss:":
			m.PSS = v * 1024
		case "Private_Dirty:":
			m.PrivateDirty = v * 1024
		case "Rss:":
			m.RSS = v * 1024
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("pid %d: empty smaps_rollup (exited?)", pid)
	}
	return m, nil
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds returns utime+stime of pid (all its threads, not its reaped
// children) in seconds. It also works on a zombie that is not reaped yet,
// which is how the harness reads the final figure of a monitor that exits
// with its container.
func cpuSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields are counted
	// from the closing parenthesis.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("pid %d: short stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid %d: bad utime/stime in stat", pid)
	}
	return float64(ut+st) / clockTicks, nil
}

// peakRSS returns VmHWM of pid in bytes: the peak resident set since it
// started. A zombie has none; the caller samples while the process lives.
func peakRSS(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			n, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return n * 1024, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmHWM (exited?)", pid)
}
