package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"

	"github.com/containerd/console"
)

func cmdCompletion(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 1, 1, "shell (bash)"); err != nil {
		return err
	}
	if args[0] != "bash" {
		return usagef("shell %q is not supported: only bash", args[0])
	}
	cmds := commands(&options{})
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(a.stdout, bashCompletion, strings.Join(names, " "))
	return nil
}

// bashCompletion completes command names, flags of the command (from its
// --help) and container names (from ps --json).
const bashCompletion = `# bash completion for conmonctl; load with: source <(conmonctl completion bash)
_conmonctl() {
	local cur cmd i
	cur="${COMP_WORDS[COMP_CWORD]}"
	cmd=""
	for ((i = 1; i < COMP_CWORD; i++)); do
		case "${COMP_WORDS[i]}" in
		--root|--shim|--namespace) ((i++)) ;;
		-*) ;;
		*) cmd="${COMP_WORDS[i]}"; break ;;
		esac
	done
	if [[ -z "$cmd" ]]; then
		COMPREPLY=($(compgen -W "%s --root --json --shim --namespace --debug --version" -- "$cur"))
		return
	fi
	if [[ "$cur" == -* ]]; then
		local flags
		flags=$(conmonctl help "$cmd" 2>/dev/null | sed -n 's/^  \(--*[a-z-]*\).*/\1/p')
		COMPREPLY=($(compgen -W "$flags" -- "$cur"))
		return
	fi
	case "$cmd" in
	run) COMPREPLY=($(compgen -d -- "$cur")) ;;
	completion) COMPREPLY=($(compgen -W "bash" -- "$cur")) ;;
	help) COMPREPLY=($(compgen -W "$(conmonctl help | sed -n 's/^  \([a-z]*\) .*/\1/p')" -- "$cur")) ;;
	*)
		local names
		names=$(conmonctl ps --json 2>/dev/null | sed -n 's/^ *"name": "\(.*\)",$/\1/p')
		COMPREPLY=($(compgen -W "$names" -- "$cur")) ;;
	esac
}
complete -F _conmonctl conmonctl
`

// consoleOf returns f as a console if it is a terminal.
func consoleOf(f *os.File) (console.Console, error) {
	return console.ConsoleFromFile(f)
}

// forwardStdin copies in to the stdin fifo of a detached container started
// with -i, until ctx ends. It does not wait for a reader: if the shim no
// longer reads the fifo, the open fails and nothing is forwarded.
func forwardStdin(ctx context.Context, path string, in io.Reader) {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer f.Close()
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	_, _ = io.Copy(f, in)
}
