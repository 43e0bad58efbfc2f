// Command gen is the log load of the benchmark: it writes lines of a given
// size to stdout, as fast as the pipe takes them, until a byte count is
// reached, then exits 0. It is built static (CGO_ENABLED=0) and copied into
// the busybox root filesystem, so the generator itself is never the limit
// (busybox yes|head adds a pipe hop and a 4 KiB stdio buffer).
//
// Usage: gen LINE_BYTES TOTAL_BYTES [GATE_FILE]
//
// With GATE_FILE, gen first waits until that file exists, so the harness can
// start its clock (and read the monitor's CPU time) after the container and
// its monitor are fully set up.
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 3 && len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: gen LINE_BYTES TOTAL_BYTES [GATE_FILE]")
		os.Exit(2)
	}
	line, err1 := strconv.Atoi(os.Args[1])
	total, err2 := strconv.ParseInt(os.Args[2], 10, 64)
	if err1 != nil || err2 != nil || line < 2 || total < 0 {
		fmt.Fprintln(os.Stderr, "gen: LINE_BYTES must be >= 2 and TOTAL_BYTES >= 0")
		os.Exit(2)
	}
	if len(os.Args) == 4 {
		for deadline := time.Now().Add(time.Minute); ; {
			if _, err := os.Stat(os.Args[3]); err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintln(os.Stderr, "gen: gate file never appeared:", os.Args[3])
				os.Exit(1)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// One write carries whole lines only, at least 64 KiB: what a
	// buffered logger (stdio, a Go bufio.Writer) hands the kernel.
	perWrite := max(1, 65536/line)
	buf := make([]byte, perWrite*line)
	for i := range buf {
		if i%line == line-1 {
			buf[i] = '\n'
		} else {
			buf[i] = 'a' + byte(i%line%26)
		}
	}
	for total > 0 {
		n := int64(len(buf))
		if n > total {
			// The tail is cut at a line boundary, and ends with a newline.
			n = total - total%int64(line)
			if n == 0 {
				n = total
				buf[n-1] = '\n'
			}
		}
		if _, err := os.Stdout.Write(buf[:n]); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
		total -= n
	}
}
