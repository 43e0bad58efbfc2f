package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/containers/conmon-v2/client"
)

// logCountJSON is a count of log records and their bytes in `logs --stats
// --json`; the JSON names of these types are a contract.
type logCountJSON struct {
	Lines uint64 `json:"lines"`
	Bytes uint64 `json:"bytes"`
}

type logDriverJSON struct {
	Name    string       `json:"name"`
	Written logCountJSON `json:"written"`
	Failed  logCountJSON `json:"failed"`
	Lost    logCountJSON `json:"lost"`
	Failing bool         `json:"failing"`
	// Failures are the driver's failed calls, also those whose records
	// it held and wrote later (Failed and Lost count records).
	Failures    uint64     `json:"failures"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

type logStatsJSON struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	Pipeline bool   `json:"pipeline"`
	// Dropped were dropped before any driver: rate-limited and
	// buffer-full records.
	Dropped     logCountJSON    `json:"dropped"`
	Read        logCountJSON    `json:"read"`
	Written     logCountJSON    `json:"written"`
	Filtered    logCountJSON    `json:"filtered"`
	Redacted    uint64          `json:"redacted"`
	RateLimited logCountJSON    `json:"rate_limited"`
	BufferFull  logCountJSON    `json:"buffer_full"`
	WriteError  logCountJSON    `json:"write_error"`
	ReadErrors  uint64          `json:"read_errors"`
	Drivers     []logDriverJSON `json:"drivers"`
}

func logCount(c client.LogCounter) logCountJSON { return logCountJSON{Lines: c.Lines, Bytes: c.Bytes} }

// cmdLogStats is `logs --stats NAME`: what the container's logging
// pipeline read, wrote and lost, and each driver's failures, from its
// shim (Monitor.LogStats).
func cmdLogStats(ctx context.Context, a *app, args []string) error {
	r, s, err := a.connectOne(ctx, args)
	if err != nil {
		return err
	}
	defer s.Close()
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	st, err := s.LogStats(cctx, r.ID)
	if err != nil {
		return fmt.Errorf("container %s: %w", r.Name, err)
	}
	out := logStatsJSON{
		Name: r.Name, ID: r.ID, Pipeline: st.Pipeline, Dropped: logCount(st.Dropped()),
		Read: logCount(st.Read), Written: logCount(st.Written), Filtered: logCount(st.Filtered),
		Redacted: st.Redacted, RateLimited: logCount(st.RateLimited), BufferFull: logCount(st.BufferFull),
		WriteError: logCount(st.WriteError), ReadErrors: st.ReadErrors, Drivers: []logDriverJSON{},
	}
	for _, d := range st.Drivers {
		dj := logDriverJSON{Name: d.Name, Written: logCount(d.Written), Failed: logCount(d.Errors),
			Lost: logCount(d.Lost), Failing: d.Failing, Failures: d.Failures, LastError: d.LastError}
		if !d.LastErrorAt.IsZero() {
			at := d.LastErrorAt.UTC()
			dj.LastErrorAt = &at
		}
		out.Drivers = append(out.Drivers, dj)
	}
	if a.json {
		return printJSON(a, out)
	}
	if !st.Pipeline {
		fmt.Fprintf(a.stdout, "container %s has no logging pipeline (log driver %s): nothing is counted\n", r.Name, orDash(r.LogDriver))
		return nil
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	count := func(c logCountJSON) string { return fmt.Sprintf("%d lines\t%s", c.Lines, humanBytes(c.Bytes)) }
	fmt.Fprintf(w, "read\t%s\n", count(out.Read))
	fmt.Fprintf(w, "written\t%s\n", count(out.Written))
	fmt.Fprintf(w, "filtered\t%s\n", count(out.Filtered))
	fmt.Fprintf(w, "redacted\t%d lines\t\n", out.Redacted)
	fmt.Fprintf(w, "rate limited\t%s\n", count(out.RateLimited))
	fmt.Fprintf(w, "buffer full\t%s\n", count(out.BufferFull))
	fmt.Fprintf(w, "driver failed+lost\t%s\n", count(out.WriteError))
	fmt.Fprintf(w, "dropped\t%s\n", count(out.Dropped))
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	w = tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DRIVER\tWRITTEN\tFAILED\tLOST\tFAILURES\tSTATUS\tLAST ERROR")
	for _, d := range out.Drivers {
		status, last := "ok", "-"
		if d.Failing {
			status = "failing"
		}
		if d.LastError != "" {
			last = d.LastError
			if d.LastErrorAt != nil {
				last = d.LastErrorAt.Format(time.RFC3339) + " " + last
			}
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%s\t%s\n", d.Name, d.Written.Lines, d.Failed.Lines, d.Lost.Lines, d.Failures, status, last)
	}
	return w.Flush()
}
