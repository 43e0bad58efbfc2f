package bench

import "context"

// turnResult is what takeTurns measured of one system.
type turnResult struct {
	// Times holds the system's samples in milliseconds, one per round
	// it took part in.
	Times []float64
	// Paired holds, for each round in which both this system and the
	// floor succeeded, this system's sample minus the floor's. It is nil
	// for the floor itself.
	Paired []float64
}

// takeTurns measures n systems in rounds, so that all of them are sampled
// in the same seconds: on a shared machine runc's own time moves by
// 10-20 ms between runs, which a system measured a minute after the floor
// would carry into its difference. Each round calls sample once per
// system, starting with system i mod n in round i, so that no system
// always runs first or always follows the same neighbour. sample(k)
// measures system k once and returns its time in milliseconds, or false
// if it failed; a system that failed is skipped in the later rounds (its
// error is the caller's to keep). floor is the index of the floor, or -1
// for none. takeTurns stops early when ctx is done.
func takeTurns(ctx context.Context, rounds, n, floor int, sample func(k int) (float64, bool)) []turnResult {
	out := make([]turnResult, n)
	failed := make([]bool, n)
	round := make([]float64, n)
	ok := make([]bool, n)
	for i := 0; i < rounds && ctx.Err() == nil; i++ {
		clear(ok)
		for j := range n {
			k := (i + j) % n
			if failed[k] {
				continue
			}
			v, good := sample(k)
			if !good {
				failed[k] = true
				continue
			}
			out[k].Times = append(out[k].Times, v)
			round[k], ok[k] = v, true
		}
		if floor < 0 || floor >= n || !ok[floor] {
			continue
		}
		for k := range n {
			if ok[k] && k != floor {
				out[k].Paired = append(out[k].Paired, round[k]-round[floor])
			}
		}
	}
	return out
}

// pairedMedian is the median of the paired differences xs, nil if there
// are none (the floor, or a system that never succeeded in the same round
// as the floor).
func pairedMedian(xs []float64) *float64 {
	if len(xs) == 0 {
		return nil
	}
	v := pct(xs, 50)
	return &v
}
