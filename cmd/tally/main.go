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
		newViewerCommand(g),
		newRSACommand(g),
		newLogCommand(),
		newHistoryCommand(g),
		newValueCommand(g),
		newUsageCommand(g),
		newCorrectCommand(g),
		newReplayCommand(g),
		newVerifyCommand(g),
		newReadModelsCommand(g),
		newBenchCommand(g),
		newBackupCommand(g),
		newRestoreCommand(g),
		newUploadsCommand(g),
		newVersionCommand(),
		newAnomaliesCommand(g),
	)
	// tally --version prints what tally version prints.
	info := readBuildInfo()
	root.Version = info.Version
	root.SetVersionTemplate(info.String())
	return root
}

// applyEnv fills flags the command line did not set from their TALLY_* environment variables
// (--data-dir from TALLY_DATA_DIR, and so on), so that flags win over the environment and the
// environment over defaults. Only the global flags, the store's and every flag of serve read
// the environment: a TALLY_FORMAT or TALLY_NAME would mean something else to every command.
func applyEnv(cmd *cobra.Command) error {
	var firstErr error
	set := func(f *pflag.Flag) {
		if f.Changed || firstErr != nil || !readsEnv(cmd, f.Name) {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := f.Value.Set(v); err != nil {
				firstErr = fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	cmd.Flags().VisitAll(set)
	cmd.InheritedFlags().VisitAll(set)
	return firstErr
}

// envName is the environment variable of a flag: --kurrentdb-url reads TALLY_KURRENTDB_URL.
func envName(flag string) string {
	return "TALLY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// readsEnv says whether a flag of cmd reads its environment variable.
func readsEnv(cmd *cobra.Command, flag string) bool {
	switch flag {
	case "server", "data-dir", "admin-token", "ca-cert", "store", "kurrentdb-url", "rsa-key":
		return true
	}
	return cmd.Name() == "serve"
}
