package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WithBulkLoad opens the store for loading many events at once into a data directory that
// nothing else uses (tally bench --workload history). The writer commits straight into the
// database file (a rollback journal kept in memory instead of the WAL, so each page is written
// once rather than to the WAL and again at a checkpoint) with synchronous=OFF (a commit waits
// for no fsync). Every guarantee of Append holds but one: an acknowledged append is durable only
// once Close has returned nil. Close makes it so: it puts the database back in WAL mode with
// synchronous=FULL and syncs the file and the directory. A load that stops before Close returns
// (a crash, a power cut) may leave a damaged database: delete the directory, never serve it.
// Reads, subscriptions (readers wait for a commit in progress instead of reading beside it),
// positions in commit order and expected revisions are as in the default mode (the contract
// suite runs on it: TestContractBulkLoad).
func WithBulkLoad() Option {
	return func(o *options) {
		o.bulk = true
	}
}

// bulkPragmas are the connection settings of a bulk load (see WithBulkLoad).
func bulkPragmas(readOnly bool) []string {
	if readOnly {
		return nil // the readers take the journal mode the writer set
	}
	return []string{
		"journal_mode(MEMORY)",
		"synchronous(OFF)",
		// The default mode's 16 MiB: a larger page cache made every commit slower (SQLite
		// walks the cache when a transaction ends), 64 MiB by a fifth, 256 MiB by half.
		"cache_size(-16384)",
		// A multi-row INSERT keeps a statement journal: in memory it costs no system calls.
		"temp_store(MEMORY)",
	}
}

// syncBulkLoad makes a bulk load durable and the database an ordinary store again: called by
// Close once the writer has stopped.
func (s *Store) syncBulkLoad() error {
	ctx := context.Background()
	conn, err := s.writeDB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("bulk load: sync: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "PRAGMA synchronous=FULL"); err != nil {
		return fmt.Errorf("bulk load: sync: %w", err)
	}
	var mode string
	if err := conn.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode); err != nil {
		return fmt.Errorf("bulk load: back to WAL mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("bulk load: the database stayed in journal mode %q", mode)
	}
	// Every page was written with synchronous=OFF: sync the file, then its directory entry
	// (the database file may be new).
	if err := syncFile(filepath.Join(s.dir, DatabaseFile)); err != nil {
		return fmt.Errorf("bulk load: sync the database file: %w", err)
	}
	if err := syncFile(s.dir); err != nil {
		return fmt.Errorf("bulk load: sync the directory: %w", err)
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}
