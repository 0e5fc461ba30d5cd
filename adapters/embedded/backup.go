package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/tallyledger/tally/domain/eventstore"
)

// BackupTo writes a consistent copy of the database to path, a file that must not exist, and
// returns the position of the last event in it. It runs SQLite's VACUUM INTO on a read
// connection: in WAL mode that reads one snapshot of the database while the writer goes on
// committing (the WAL only grows meanwhile, since a checkpoint cannot pass the reader), so
// appends are never blocked. The copy is compact (no free pages, no WAL) and owner-only.
func (s *Store) BackupTo(ctx context.Context, path string) (eventstore.Position, error) {
	if s.isClosing() {
		return eventstore.Start, fmt.Errorf("backup: %w", eventstore.ErrClosed)
	}
	// Created here, empty and owner-only, so that SQLite writes into a file of mode 0600 (it
	// keeps the mode of an existing file); O_EXCL refuses to overwrite anything.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, privateFileMode)
	if err != nil {
		return eventstore.Start, fmt.Errorf("backup: %w", err)
	}
	if err := errors.Join(f.Chmod(privateFileMode), f.Close()); err != nil {
		_ = os.Remove(path)
		return eventstore.Start, fmt.Errorf("backup: %w", err)
	}
	if err := s.vacuumInto(ctx, path); err != nil {
		_ = os.Remove(path)
		return eventstore.Start, fmt.Errorf("backup: %w", s.closedError(err))
	}
	// The position is read from the copy itself: it is exactly what the copy holds.
	copyDB, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?mode=ro")
	if err != nil {
		_ = os.Remove(path)
		return eventstore.Start, fmt.Errorf("backup: open the copy: %w", err)
	}
	defer copyDB.Close()
	var last sql.NullInt64
	if err := copyDB.QueryRowContext(ctx, `SELECT MAX(position) FROM events`).Scan(&last); err != nil {
		_ = os.Remove(path)
		return eventstore.Start, fmt.Errorf("backup: read the copy's position: %w", err)
	}
	return eventstore.Position(last.Int64), nil
}

// vacuumInto runs VACUUM INTO on a connection of its own: the read pool's connections are
// query_only, which refuses VACUUM INTO, and the writer's must not wait for a copy. The
// connection only reads the database; it writes the copy.
func (s *Store) vacuumInto(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", dsn(filepath.Join(s.dir, DatabaseFile), false, false))
	if err != nil {
		return fmt.Errorf("open a connection for the copy: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, path); err != nil {
		return fmt.Errorf("VACUUM INTO %s: %w", path, err)
	}
	return nil
}
