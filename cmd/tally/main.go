// Command tally runs the Tally ledger and its tools.
//
// This main.go is a placeholder from the codec branch so that the rsa and log commands build;
// the real composition root replaces it.
package main

import (
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{Use: "tally", Short: "An auditable ledger of license usage", SilenceUsage: true}
	root.AddCommand(newRSACommand(), newLogCommand())
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}
