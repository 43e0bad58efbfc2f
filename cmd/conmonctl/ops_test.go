package main

import (
	"testing"

	apievents "github.com/containerd/containerd/api/events"
)

func TestContainerOf(t *testing.T) {
	const id = "c1"
	for _, tc := range []struct {
		msg  any
		want string
	}{
		{&apievents.TaskCreate{ContainerID: id}, id},
		{&apievents.TaskStart{ContainerID: id}, id},
		{&apievents.TaskExit{ContainerID: id, ID: "e1"}, id},
		{&apievents.TaskDelete{ContainerID: id}, id},
		{&apievents.TaskOOM{ContainerID: id}, id},
		{&apievents.TaskExecAdded{ContainerID: id, ExecID: "e1"}, id},
		{&apievents.TaskExecStarted{ContainerID: id, ExecID: "e1"}, id},
		{&apievents.TaskPaused{ContainerID: id}, id},
		{&apievents.TaskResumed{ContainerID: id}, id},
		// Not one of the events `events` shows.
		{&apievents.TaskCheckpointed{ContainerID: id}, ""},
		{"text", ""},
		{nil, ""},
	} {
		if got := containerOf(tc.msg); got != tc.want {
			t.Errorf("containerOf(%T) = %q, want %q", tc.msg, got, tc.want)
		}
	}
}
