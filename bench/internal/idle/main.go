// Command idle is the memory reference of the benchmark: the smallest Go
// program that stays alive (it blocks until a signal). Its PSS and private
// dirty memory are what any monitor written in Go pays per process before
// it does any work, built the way `make build` builds conmon-v2's
// binaries (static, stripped).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}
