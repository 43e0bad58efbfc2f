// Command nnp stands in for the nonewprivs test image: installed setuid root,
// it prints its effective uid, which stays the caller's when the container
// runs with no_new_privs.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
