package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/cmd/tally/internal/backup"
	"github.com/tallyledger/tally/projections"
)

// newBackupFunc is what GET /admin/v1/backup runs in tally serve on the embedded store: one
// backup at a time, made in-process because the server holds the store's directory lock and
// is the one that knows a consistent position (see docs/operations.md).
func newBackupFunc(dataDir string, store *embedded.Store, rsaKeyFiles []string, logger *slog.Logger) func(ctx context.Context, w io.Writer) error {
	// Copies left by a backup that a crash cut short: the server holds the store's lock, so no
	// backup of this data directory runs now.
	if stale, err := filepath.Glob(filepath.Join(dataDir, backup.TempPattern)); err == nil {
		for _, f := range stale {
			if err := os.Remove(f); err != nil {
				logger.Warn("remove a stale backup copy", "file", f, "err", err)
			}
		}
	}
	var running sync.Mutex
	var notes []string
	if len(rsaKeyFiles) > 0 {
		notes = append(notes, "the server was started with --rsa-key "+strings.Join(rsaKeyFiles, ",")+
			": those keys are not in this archive; keep them with it and pass them to the restored server")
	}
	return func(ctx context.Context, w io.Writer) error {
		if !running.TryLock() {
			return httpapi.ErrBackupRunning
		}
		defer running.Unlock()
		started := time.Now()
		m, err := backup.Write(ctx, w, backup.Source{
			DataDir: dataDir,
			CopyStore: func(ctx context.Context, path string) (uint64, error) {
				p, err := store.BackupTo(ctx, path)
				return uint64(p), err
			},
			CopyState: func(ctx context.Context, path string) (bool, error) {
				return projections.CopyState(ctx, filepath.Join(dataDir, projections.StateFile), path)
			},
			Notes: notes,
		})
		if err != nil {
			return err
		}
		logger.Info("backup written", "position", m.Position, "files", len(m.Files), "took", time.Since(started).String())
		return nil
	}
}

func newBackupCommand(g *globalFlags) *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "backup --to FILE",
		Short: "Fetch a consistent backup (tar.gz) of a running server's embedded store, keys and admin token",
		Long: "backup asks the running server (--server, the admin API) for an archive of its data directory:\n" +
			"a consistent copy of the embedded event store, taken while writes go on, with the projection\n" +
			"snapshot, the RSA keys and the admin token. FILE is written with mode 0600 (it holds every\n" +
			"license key and the server's secrets), checked against the archive's manifest, and only then\n" +
			"given its name; an existing FILE is never overwritten. `tally restore` makes a data directory\n" +
			"from it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return errors.New("--to FILE is required")
			}
			if _, err := os.Lstat(to); !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("--to %s: the file exists; a backup never overwrites one", to)
			}
			token, err := g.adminToken()
			if err != nil {
				return err
			}
			tmp, err := os.CreateTemp(filepath.Dir(to), "."+filepath.Base(to)+".partial-*") // mode 0600
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			defer os.Remove(tmp.Name())
			_, err = httpapi.NewAdminClient(g.Server, token, nil).Backup(cmd.Context(), tmp)
			if err == nil {
				err = tmp.Sync()
			}
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			m, err := checkArchive(tmp.Name())
			if err != nil {
				return err
			}
			// Link, not rename: fails if FILE appeared meanwhile.
			if err := os.Link(tmp.Name(), to); err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			if err := backup.SyncDir(filepath.Dir(to)); err != nil {
				return err
			}
			fi, err := os.Stat(to)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "backup at position %d (%d files, %d bytes) written to %s\n", m.Position, len(m.Files), fi.Size(), to)
			for _, n := range m.Notes {
				fmt.Fprintf(out, "note: %s\n", n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "archive to write (tar.gz; must not exist)")
	return cmd
}

func checkArchive(path string) (backup.Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return backup.Manifest{}, err
	}
	defer f.Close()
	return backup.Check(f)
}

func newRestoreCommand(g *globalFlags) *cobra.Command {
	var from string
	cmd := &cobra.Command{
		Use:   "restore --from FILE --data-dir DIR",
		Short: "Make a data directory from a backup archive",
		Long: "restore unpacks an archive written by `tally backup` into DIR (--data-dir), which must not\n" +
			"exist or be empty: it never writes over a data directory. DIR is made with mode 0700 and every\n" +
			"file with mode 0600. The archive is checked against its manifest, and the restored store must\n" +
			"end at the manifest's position; otherwise everything restored is removed again. Then run\n" +
			"`tally verify --data-dir DIR` and `tally serve --data-dir DIR`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				return errors.New("--from FILE is required")
			}
			f, err := os.Open(from)
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			defer f.Close()
			m, err := backup.Restore(f, g.DataDir)
			if err != nil {
				return err
			}
			if err := checkRestoredStore(cmd.Context(), g.DataDir, m); err != nil {
				// The directory was empty before: take back everything restore put there.
				entries, _ := os.ReadDir(g.DataDir)
				for _, e := range entries {
					_ = os.RemoveAll(filepath.Join(g.DataDir, e.Name()))
				}
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "restored the backup of %s at position %d into %s (%d files)\n",
				m.Created.Format(time.RFC3339), m.Position, g.DataDir, len(m.Files))
			for _, n := range m.Notes {
				fmt.Fprintf(out, "note: %s\n", n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "archive written by tally backup")
	return cmd
}

// checkRestoredStore opens the restored store and checks it ends where the manifest says.
func checkRestoredStore(ctx context.Context, dataDir string, m backup.Manifest) error {
	s, err := embedded.Open(ctx, filepath.Join(dataDir, "events"))
	if err != nil {
		return fmt.Errorf("restore: open the restored store: %w", err)
	}
	head, err := s.Head(ctx)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if uint64(head) != m.Position {
		return fmt.Errorf("restore: the restored store ends at position %d, the manifest says %d", head, m.Position)
	}
	return nil
}
