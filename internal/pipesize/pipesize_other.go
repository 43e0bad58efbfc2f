//go:build !linux

package pipesize

import "io"

// Allowed is false: pipes are grown on Linux only.
func Allowed() bool { return false }

// Observe does nothing outside Linux.
func (g *Grower) Observe(fd uintptr, n, buf int) {}

// ReaderGrower does nothing outside Linux.
type ReaderGrower struct{}

// ForReader returns nil outside Linux.
func ForReader(io.Reader) *ReaderGrower { return nil }

// Observe does nothing outside Linux.
func (*ReaderGrower) Observe(n, buf int) {}
