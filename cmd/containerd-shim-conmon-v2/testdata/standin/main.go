// Command standin stands in for the shim daemon in TestLauncher: it
// appends its argv (argv[0] included, which a #! script cannot see) to
// the file $STANDIN_RECORD; as the daemon (no action) it reports ready on
// fd 4, and otherwise exits 3.
package main

import (
	"os"
	"slices"
	"strings"
)

func main() {
	f, err := os.OpenFile(os.Getenv("STANDIN_RECORD"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		os.Exit(2)
	}
	f.WriteString(strings.Join(os.Args, " ") + "\n")
	f.Close()
	if slices.Contains(os.Args, "start") || slices.Contains(os.Args, "delete") || slices.Contains(os.Args, "-v") {
		os.Exit(3)
	}
	os.NewFile(4, "ready").WriteString("ok")
}
