package process

import (
	"fmt"

	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
)

// Status is the lifecycle state of a process (init or exec).
type Status int

// The states a process moves through. Deleted is terminal: a deleted
// process is forgotten by the service right after the transition.
const (
	Created Status = iota + 1
	Running
	Paused
	Stopped
	Deleted
)

func (s Status) String() string {
	switch s {
	case Created:
		return "created"
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Stopped:
		return "stopped"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// Proto returns the containerd task status for s.
func (s Status) Proto() task.Status {
	switch s {
	case Created:
		return task.Status_CREATED
	case Running:
		return task.Status_RUNNING
	case Paused:
		return task.Status_PAUSED
	case Stopped, Deleted:
		return task.Status_STOPPED
	}
	return task.Status_UNKNOWN
}

// Event is what moves a process from one Status to another.
type Event int

// The events of the state machine.
const (
	EvStart Event = iota + 1
	EvPause
	EvResume
	EvExit
	EvDelete
)

func (e Event) String() string {
	switch e {
	case EvStart:
		return "start"
	case EvPause:
		return "pause"
	case EvResume:
		return "resume"
	case EvExit:
		return "exit"
	case EvDelete:
		return "delete"
	}
	return fmt.Sprintf("event(%d)", int(e))
}

// transitions is the whole state machine: from -> event -> to. A pair that
// is missing is refused. A created process may exit (it was killed before
// Start, or runc's init died) and may be deleted without ever running.
var transitions = map[Status]map[Event]Status{
	Created: {EvStart: Running, EvExit: Stopped, EvDelete: Deleted},
	Running: {EvPause: Paused, EvExit: Stopped},
	Paused:  {EvResume: Running, EvExit: Stopped},
	Stopped: {EvDelete: Deleted},
}

// Next returns the state that ev leads to from s, or a FailedPrecondition
// error naming both when the machine has no such edge.
func Next(s Status, ev Event) (Status, error) {
	if to, ok := transitions[s][ev]; ok {
		return to, nil
	}
	return s, fmt.Errorf("cannot %s a %s process: %w", ev, s, errdefs.ErrFailedPrecondition)
}
