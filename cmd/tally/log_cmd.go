package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/usagelog"
)

// newLogCommand is `tally log`: write and read offline usage logs (.skm files) as the License
// Server does, for testing and for support.
func newLogCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "log",
		Short: "Write and read offline usage logs (.skm)",
	}
	cmd.AddCommand(newLogAppendCommand(), newLogInspectCommand())
	return cmd
}

func newLogAppendCommand() *cobra.Command {
	var (
		publicKey, file  string
		object, amount   int64
		timestamp        int64
		quirks, asBase64 bool
	)
	cmd := &cobra.Command{
		Use:   "append",
		Short: "Wrap a log file in one new layer (creating the file if absent)",
		Long: "Wrap a usage log in one new layer recording --amount (negative: a decrement) on --object,\n" +
			"encrypted for --public-key (PEM or .NET XML), as the License Server does. With --quirks the\n" +
			"layer has the reference writer's shape: the object id as the amount, negated for a decrement.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			keyData, err := os.ReadFile(publicKey)
			if err != nil {
				return fmt.Errorf("public key: %w", err)
			}
			pub, err := usagelog.ParsePublicKey(keyData)
			if err != nil {
				return fmt.Errorf("%s: %w", publicKey, err)
			}
			previous, err := os.ReadFile(file)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				previous = nil
			case err != nil:
				return err
			case asBase64:
				if previous, err = base64.StdEncoding.DecodeString(string(bytes.TrimSpace(previous))); err != nil {
					return fmt.Errorf("%s: base64: %w", file, err)
				}
			}
			if !cmd.Flags().Changed("timestamp") {
				timestamp = time.Now().Unix()
			}
			next, err := usagelog.Record(previous, pub, object, amount, timestamp, quirks)
			if err != nil {
				return err
			}
			id, err := usagelog.LayerIDOf(next)
			if err != nil {
				return err
			}
			out := next
			if asBase64 {
				out = []byte(base64.StdEncoding.EncodeToString(next) + "\n")
			}
			if err := writeFileAtomic(file, out); err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "appended layer %s to %s (%d bytes)\n", id, file, len(next))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&publicKey, "public-key", "", "the server's public key file, PEM or .NET XML (required)")
	f.StringVar(&file, "file", "", "the log file to create or wrap (required)")
	f.Int64Var(&object, "object", 0, "the data object id (required)")
	f.Int64Var(&amount, "amount", 0, "the amount; negative for a decrement (required)")
	f.Int64Var(&timestamp, "timestamp", 0, "the layer's Unix time (default now)")
	f.BoolVar(&quirks, "quirks", false, "write the reference writer's shape (amount = object id)")
	f.BoolVar(&asBase64, "base64", false, "the file holds base64 text, as uploaded, rather than raw bytes")
	for _, name := range []string{"public-key", "file", "object", "amount"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func newLogInspectCommand() *cobra.Command {
	var privateKeys []string
	var maxLayers int
	cmd := &cobra.Command{
		Use:   "inspect LOG",
		Short: "Decrypt a log and print its entries, oldest first",
		Long: "Decrypt a usage log (raw .skm bytes or base64 text) with the given private key(s) and print\n" +
			"one line per layer, oldest first: layer id, time (RFC 3339, UTC), direction, object, amount.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ring, err := usagelog.LoadKeyRingFiles(privateKeys...)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			raw := data
			if len(data) > 0 && data[0] != 0x93 && data[0] != 0x00 { // a raw log starts with an array of 3
				if raw, err = base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data))); err != nil {
					return fmt.Errorf("%s is neither a raw log nor base64: %w", args[0], err)
				}
			}
			d := &usagelog.Decoder{
				Keys:          ring,
				MaxInputBytes: base64.StdEncoding.EncodedLen(len(raw)) + 4,
				MaxNewLayers:  maxLayers,
			}
			entries, err := d.DecodeRaw(cmd.Context(), raw, usagelog.OldestFirst, nil)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			w := cmd.OutOrStdout()
			for _, e := range entries {
				direction := "increment"
				if e.Decrement {
					direction = "decrement"
				}
				when := time.Unix(e.Timestamp, 0).UTC().Format(time.RFC3339)
				if _, err := fmt.Fprintf(w, "%s %s %s object=%d amount=%d\n", e.Layer, when, direction, e.ObjectID, e.Amount); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&privateKeys, "private-key", nil, "a private key PEM file; repeat for older keys (required)")
	cmd.Flags().IntVar(&maxLayers, "max-layers", 1_000_000, "refuse logs with more layers than this")
	_ = cmd.MarkFlagRequired("private-key")
	return cmd
}

// writeFileAtomic replaces path with data through a temporary file in the same directory, so a
// reader never sees a half-written log.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tally-log-*.tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err = errors.Join(err, f.Chmod(0o644), f.Sync(), f.Close()); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
