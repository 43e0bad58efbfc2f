//go:build !linux

package logging

type dirWatch struct{}

func watchDir(string) *dirWatch        { return nil }
func (w *dirWatch) C() <-chan struct{} { return nil }
func (w *dirWatch) Close()             {}
