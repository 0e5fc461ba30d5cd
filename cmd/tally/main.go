// Command tally runs the Tally ledger server and its operator tools. This package is the one
// composition root: it reads configuration and wires the adapters to the domain, nothing else.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tally:", err)
		os.Exit(1)
	}
}

// newRootCommand builds the whole command tree.
func newRootCommand() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "tally",
		Short:         "An auditable, event-sourced ledger of license usage (Cryptolens-compatible)",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd)
		},
	}
	g.register(root.PersistentFlags())
	root.AddCommand(
		newServeCommand(g),
		newProductCommand(g),
		newKeyCommand(g),
		newTokenCommand(g),
		newRSACommand(g),
		newLogCommand(),
		newHistoryCommand(g),
		newValueCommand(g),
		newUsageCommand(g),
		newCorrectCommand(g),
		newReplayCommand(g),
		newVerifyCommand(g),
		newBenchCommand(g),
	)
	return root
}

// applyEnv fills every flag the command line did not set from its TALLY_* environment
// variable (--data-dir from TALLY_DATA_DIR, and so on), so that flags win over the environment
// and the environment over defaults.
func applyEnv(cmd *cobra.Command) error {
	var firstErr error
	set := func(f *pflag.Flag) {
		if f.Changed || firstErr != nil {
			return
		}
		name := "TALLY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if err := f.Value.Set(v); err != nil {
				firstErr = fmt.Errorf("%s: %w", name, err)
			}
			f.Changed = true
		}
	}
	cmd.Flags().VisitAll(set)
	cmd.InheritedFlags().VisitAll(set)
	return firstErr
}
