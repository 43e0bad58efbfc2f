package logging

import "errors"

// ErrHeld marks a Write or WriteRead error after which the driver still
// has the records: it holds them for a retry (a file on a full disk) and
// either writes them later or, if it gives them up, counts them through
// Loser. The pipeline then counts the failure (DriverStats.Failures,
// LastError) but not the records as failed, so that each record is counted
// once, in the category of its fate: written, failed or lost.
var ErrHeld = errors.New("records held for a retry")

// Held wraps a write error as ErrHeld; its text stays err's. Held(nil) is
// nil.
func Held(err error) error {
	if err == nil {
		return nil
	}
	return heldError{err}
}

type heldError struct{ err error }

func (e heldError) Error() string   { return e.err.Error() }
func (e heldError) Unwrap() []error { return []error{e.err, ErrHeld} }
