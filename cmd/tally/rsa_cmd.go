package main

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/usagelog"
)

// newRSACommand is `tally rsa`: the server's RSA key, which License Servers encrypt usage logs
// for.
func newRSACommand(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rsa",
		Short: "The server's RSA key for usage logs",
	}
	var format string
	var rsaKeys []string
	export := &cobra.Command{
		Use:   "export",
		Short: "Print the public part of the current key (for the License Server configuration)",
		Long: "Print the public part of the current key, DATA-DIR/" + usagelog.CurrentKeyFile + ", as the .NET XML\n" +
			"<RSAKeyValue> the License Server configuration takes, or as PEM. The key is not created\n" +
			"here: the server creates it on first start.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// A server started with --rsa-key uses that key, not the data directory's.
			path := filepath.Join(g.DataDir, usagelog.CurrentKeyFile)
			if len(rsaKeys) > 0 {
				path = rsaKeys[0]
			}
			key, err := usagelog.LoadPrivateKeyFile(path)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("no key at %s: start the server once to create it, or check --data-dir", path)
			}
			if err != nil {
				return err
			}
			switch format {
			case "xml":
				_, err = fmt.Fprintln(cmd.OutOrStdout(), usagelog.PublicKeyXML(&key.PublicKey))
			case "pem":
				var pemBytes []byte
				if pemBytes, err = usagelog.PublicKeyPEM(&key.PublicKey); err == nil {
					_, err = cmd.OutOrStdout().Write(pemBytes)
				}
			default:
				return fmt.Errorf("--format %q: want xml or pem", format)
			}
			return err
		},
	}
	export.Flags().StringVar(&format, "format", "xml", "xml (.NET RSAKeyValue) or pem")
	export.Flags().StringSliceVar(&rsaKeys, "rsa-key", nil, "the server's private key file(s), as given to tally serve --rsa-key (TALLY_RSA_KEY); the first is exported")
	cmd.AddCommand(export)
	return cmd
}
