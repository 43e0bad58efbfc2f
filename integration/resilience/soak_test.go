package resilience

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/logging"
)

// soakEnv configures TestSoak: "containers=N,lines=M" (make soak sets it;
// the default is the short CI variant).
const soakEnv = "CONMON_V2_SOAK"

// TestSoak: many containers in one dense daemon, each writing numbered
// lines (busybox seq) as fast as the monitor takes them, to a k8s-file log
// configured by annotations, then exiting with a status of its own. Every
// container's log must hold every number exactly once and in order, and
// every exit status must be right. The daemon's RSS is sampled every
// second and reported (not asserted: no timing or size assertion in make
// test).
func TestSoak(t *testing.T) {
	containers, lines := 4, 50000
	if v := os.Getenv(soakEnv); v != "" {
		for _, kv := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(val)
			if err != nil || n <= 0 {
				t.Fatalf("%s: bad %q", soakEnv, kv)
			}
			switch k {
			case "containers":
				containers = n
			case "lines":
				lines = n
			default:
				t.Fatalf("%s: unknown key %q", soakEnv, k)
			}
		}
	}
	e := newEnv(t)
	e.dense()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	logDir := e.logDir()
	start := time.Now()
	tasks := make([]*task, containers)
	for i := range tasks {
		tasks[i] = e.start(ctx, fmt.Sprintf("soak%d", i),
			[]string{"sh", "-c", fmt.Sprintf("seq 1 %d; exit %d", lines, 10+i%200)}, false,
			map[string]string{
				client.LogAnnotationPrefix + "driver": "k8s-file",
				client.LogAnnotationPrefix + "path":   filepath.Join(logDir, fmt.Sprintf("soak%d.log", i)),
			})
	}

	// RSS of the daemon, once a second, until every container exited.
	var (
		mu      sync.Mutex
		samples []uint64
	)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if info, err := tasks[0].shim.Info(ctx); err == nil {
				mu.Lock()
				samples = append(samples, info.RSSKB)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	for i, tk := range tasks {
		w, err := tk.shim.Wait(ctx, tk.id, "")
		if err != nil {
			t.Fatalf("wait %s: %v", tk.id, err)
		}
		if want := uint32(10 + i%200); w.Status != want {
			t.Errorf("%s exited %d, want %d", tk.id, w.Status, want)
		}
	}
	elapsed := time.Since(start)
	close(stop)
	<-sampled
	info, err := tasks[0].shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks {
		tk.remove(t)
	}

	var total int64
	for i := range tasks {
		n, size := checkSeqLog(t, filepath.Join(logDir, fmt.Sprintf("soak%d.log", i)), lines)
		total += size
		if n != lines {
			t.Errorf("soak%d: %d of %d lines", i, n, lines)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	var peak uint64
	for _, s := range samples {
		peak = max(peak, s)
	}
	t.Logf("%d containers x %d lines in %v: %.1f MB of log, %.1f MB/s; daemon RSS samples (KiB) first %v peak %d last %d; %d goroutines, %d fds at the end",
		containers, lines, elapsed.Round(time.Millisecond), float64(total)/1e6, float64(total)/1e6/elapsed.Seconds(),
		first(samples), peak, info.RSSKB, info.Goroutines, info.FDs)
}

func first(s []uint64) any {
	if len(s) == 0 {
		return "none"
	}
	return s[0]
}

// checkSeqLog reads a k8s-file log that should hold "1".."lines" and
// returns how many numbers it held in order, and the file's size.
func checkSeqLog(t *testing.T, path string, lines int) (int, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	next := 1
	var pending []byte
	for sc.Scan() {
		var rec logging.Record
		if !logging.ParseK8sLine(sc.Bytes(), &rec) {
			t.Errorf("%s: bad line %q", path, sc.Bytes())
			return next - 1, st.Size()
		}
		pending = append(pending, rec.Line...)
		if rec.Partial {
			continue
		}
		if want := strconv.Itoa(next); string(pending) != want {
			t.Errorf("%s: line %d is %q, want %q", path, next, pending, want)
			return next - 1, st.Size()
		}
		pending = pending[:0]
		next++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return next - 1, st.Size()
}
