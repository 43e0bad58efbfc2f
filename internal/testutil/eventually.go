package testutil

import (
	"testing"
	"time"
)

// Eventually calls f every 100 ms until it returns nil, and fails the test
// with f's last error once d has passed: a guard against a hang, not a
// timing assertion.
func Eventually(t testing.TB, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
