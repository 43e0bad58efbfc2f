package bench

import (
	"context"
	"reflect"
	"testing"
)

func TestTakeTurns(t *testing.T) {
	tests := []struct {
		name   string
		rounds int
		n      int
		floor  int
		// value of system k in round i; a negative value fails
		value      func(i, k int) float64
		wantOrder  []int
		wantTimes  [][]float64
		wantPaired [][]float64
	}{
		{
			name: "rotates and pairs with the floor", rounds: 3, n: 3, floor: 0,
			value:      func(i, k int) float64 { return float64(10*k + i) },
			wantOrder:  []int{0, 1, 2, 1, 2, 0, 2, 0, 1},
			wantTimes:  [][]float64{{0, 1, 2}, {10, 11, 12}, {20, 21, 22}},
			wantPaired: [][]float64{nil, {10, 10, 10}, {20, 20, 20}},
		},
		{
			name: "a failed system is skipped afterwards", rounds: 3, n: 2, floor: 0,
			value: func(i, k int) float64 {
				if k == 1 && i == 1 {
					return -1
				}
				return float64(5*k + i)
			},
			wantOrder:  []int{0, 1, 1, 0, 0},
			wantTimes:  [][]float64{{0, 1, 2}, {5}},
			wantPaired: [][]float64{nil, {5}},
		},
		{
			name: "no pair in a round the floor failed", rounds: 2, n: 2, floor: 1,
			value: func(i, k int) float64 {
				if k == 1 && i == 1 {
					return -1
				}
				return float64(3*k + i + 1)
			},
			wantOrder:  []int{0, 1, 1, 0},
			wantTimes:  [][]float64{{1, 2}, {4}},
			wantPaired: [][]float64{{-3}, nil},
		},
		{
			name: "no floor, no pairs", rounds: 2, n: 2, floor: -1,
			value:      func(i, k int) float64 { return float64(k) },
			wantOrder:  []int{0, 1, 1, 0},
			wantTimes:  [][]float64{{0, 0}, {1, 1}},
			wantPaired: [][]float64{nil, nil},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var order []int
			got := takeTurns(context.Background(), tt.rounds, tt.n, tt.floor, func(k int) (float64, bool) {
				order = append(order, k)
				// a system's i-th call is in round i: it is called once
				// per round until it fails
				v := tt.value(calls(order[:len(order)-1], k), k)
				return v, v >= 0
			})
			if !reflect.DeepEqual(order, tt.wantOrder) {
				t.Errorf("order %v, want %v", order, tt.wantOrder)
			}
			for k := range tt.n {
				if !reflect.DeepEqual(got[k].Times, tt.wantTimes[k]) {
					t.Errorf("system %d: times %v, want %v", k, got[k].Times, tt.wantTimes[k])
				}
				if !reflect.DeepEqual(got[k].Paired, tt.wantPaired[k]) {
					t.Errorf("system %d: paired %v, want %v", k, got[k].Paired, tt.wantPaired[k])
				}
			}
		})
	}
}

// calls counts the calls of system k in order.
func calls(order []int, k int) int {
	c := 0
	for _, o := range order {
		if o == k {
			c++
		}
	}
	return c
}

func TestTakeTurnsStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	got := takeTurns(ctx, 100, 2, 0, func(k int) (float64, bool) {
		n++
		if n == 3 {
			cancel()
		}
		return 1, true
	})
	if n != 4 { // the round under way finishes
		t.Errorf("%d n, want 4", n)
	}
	if len(got[1].Paired) != 2 {
		t.Errorf("paired %v, want two rounds", got[1].Paired)
	}
}

func TestPairedMedian(t *testing.T) {
	if p := pairedMedian(nil); p != nil {
		t.Errorf("pairedMedian(nil) = %v, want nil", *p)
	}
	if p := pairedMedian([]float64{3, -1, 2}); p == nil || *p != 2 {
		t.Errorf("pairedMedian = %v, want 2", p)
	}
}
