package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// bulkCacheKiB is the page cache of a bulk load's writer connection: room for the whole
// (stream, revision) index of tens of millions of events, so that inserting into it never
// waits for a page to come back from the file.
const bulkCacheKiB = 256 << 10

// bulkCheckpointPages is how many WAL pages trigger a checkpoint during a bulk load.
const bulkCheckpointPages = 100000

// WithBulkLoad opens the store for loading many events at once into a data directory that
// nothing else uses (tally bench --workload history): the writer commits with
// synchronous=OFF, so a commit waits for no fsync. Every guarantee of Append holds but one: an acknowledged append is durable only
// once Close has returned nil. Close makes it so: it copies the WAL into the database file with
// synchronous=FULL (which syncs both), truncates the WAL and syncs the directory. A load that
// stops before Close returns (a crash, a power cut) leaves a directory to delete, never one to
// serve. Reads, subscriptions, positions in commit order and expected revisions are as in the
// default mode (the contract suite runs on it: TestContractBulkLoad).
func WithBulkLoad() Option {
	return func(o *options) {
		o.bulk = true
	}
}

// syncBulkLoad makes a bulk load durable: called by Close once the writer has stopped.
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
	// A checkpoint with synchronous=FULL syncs the WAL before it copies it and the database
	// file after; TRUNCATE then empties the WAL. busy is 1 if a reader kept it from finishing.
	var busy, logPages, checkpointed int
	if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logPages, &checkpointed); err != nil {
		return fmt.Errorf("bulk load: checkpoint: %w", err)
	}
	if busy != 0 {
		return errors.New("bulk load: checkpoint: a reader kept the WAL from being copied; the load is not durable")
	}
	// The files' directory entries (the database file may be new).
	return syncDir(s.dir)
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}

func syncDir(dir string) error {
	if err := syncFile(filepath.Join(dir, DatabaseFile)); err != nil {
		return fmt.Errorf("bulk load: sync the database file: %w", err)
	}
	if err := syncFile(dir); err != nil {
		return fmt.Errorf("bulk load: sync the directory: %w", err)
	}
	return nil
}
