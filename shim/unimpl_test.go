package shim

import (
	"context"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/emptypb"
)

// unimplemented answers every Task method with ErrNotImplemented; test
// services embed it and override what they need.
type unimplemented struct{}

func (unimplemented) State(context.Context, *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Create(context.Context, *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Start(context.Context, *taskv2.StartRequest) (*taskv2.StartResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Delete(context.Context, *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Pids(context.Context, *taskv2.PidsRequest) (*taskv2.PidsResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Pause(context.Context, *taskv2.PauseRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Resume(context.Context, *taskv2.ResumeRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Checkpoint(context.Context, *taskv2.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Kill(context.Context, *taskv2.KillRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Exec(context.Context, *taskv2.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) ResizePty(context.Context, *taskv2.ResizePtyRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) CloseIO(context.Context, *taskv2.CloseIORequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Update(context.Context, *taskv2.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Wait(context.Context, *taskv2.WaitRequest) (*taskv2.WaitResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Stats(context.Context, *taskv2.StatsRequest) (*taskv2.StatsResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Connect(context.Context, *taskv2.ConnectRequest) (*taskv2.ConnectResponse, error) {
	return nil, errdefs.ErrNotImplemented
}
func (unimplemented) Shutdown(context.Context, *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	return nil, errdefs.ErrNotImplemented
}
