package shim

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// Task service names. The v3 messages are byte-identical to v2 (only the
// proto package differs), so one implementation serves both.
const (
	TaskServiceV2 = "containerd.task.v2.Task"
	TaskServiceV3 = "containerd.task.v3.Task"
)

// RegisterTaskService registers svc as both containerd.task.v2.Task and
// containerd.task.v3.Task on srv. The v3 methods decode the wire bytes into
// the v2 Go types: the messages have the same fields and numbers, so the
// bytes are the same.
func RegisterTaskService(srv *ttrpc.Server, svc taskv2.TTRPCTaskService) {
	taskv2.RegisterTTRPCTaskService(srv, svc)
	srv.RegisterService(TaskServiceV3, TaskServiceDesc(svc))
}

// TaskServiceDesc describes svc's methods for any of the identical Task
// service versions.
func TaskServiceDesc(svc taskv2.TTRPCTaskService) *ttrpc.ServiceDesc {
	return &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"State":      method(svc.State),
		"Create":     method(svc.Create),
		"Start":      method(svc.Start),
		"Delete":     method(svc.Delete),
		"Pids":       method(svc.Pids),
		"Pause":      method(svc.Pause),
		"Resume":     method(svc.Resume),
		"Checkpoint": method(svc.Checkpoint),
		"Kill":       method(svc.Kill),
		"Exec":       method(svc.Exec),
		"ResizePty":  method(svc.ResizePty),
		"CloseIO":    method(svc.CloseIO),
		"Update":     method(svc.Update),
		"Wait":       method(svc.Wait),
		"Stats":      method(svc.Stats),
		"Connect":    method(svc.Connect),
		"Shutdown":   method(svc.Shutdown),
	}}
}

// method adapts a typed handler to a ttrpc.Method: it allocates the
// request message, lets ttrpc decode the payload into it and calls call.
func method[Req any, PReq interface {
	*Req
	proto.Message
}, Resp proto.Message](call func(context.Context, PReq) (Resp, error)) ttrpc.Method {
	return func(ctx context.Context, unmarshal func(any) error) (any, error) {
		req := PReq(new(Req))
		if err := unmarshal(req); err != nil {
			return nil, err
		}
		return call(ctx, req)
	}
}

// ErrorInterceptor is the shim's only unary interceptor and the only place
// errors become gRPC statuses: a handler returns errdefs-classified errors
// (errdefs.ErrNotFound, ...), which are converted here with errgrpc.ToGRPC,
// the mapping containerd decodes back. An error without a class becomes
// Unknown; an error that already is a status passes unchanged. A panic in a handler is recovered
// and answered as an Internal error, so no request can bring down the
// daemon and the containers it holds.
func ErrorInterceptor(log *slog.Logger) ttrpc.UnaryServerInterceptor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic in ttrpc handler", "method", info.FullMethod, "panic", p, "stack", string(debug.Stack()))
				resp = nil
				err = errgrpc.ToGRPC(fmt.Errorf("%s: internal error: %v: %w", info.FullMethod, p, errdefs.ErrInternal))
			}
		}()
		resp, err = m(ctx, unmarshal)
		if err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		return resp, nil
	}
}
