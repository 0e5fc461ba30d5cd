package embedded

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tallyledger/tally/domain/eventstore"
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

// PendingAppend is an append queued by AppendNoWait: its result comes with the commit that
// takes it.
type PendingAppend struct {
	req   *appendRequest
	reply *appendReply
}

// AppendNoWait queues an append for the writer as Append does, but returns as soon as it is
// queued (it blocks only while the queue is full) instead of waiting for its commit: a bulk
// loader that knows each stream's revisions in advance can then prepare its next appends while
// the writer commits these, and keep the queue full, so that each commit takes many appends.
// Appends queued by one goroutine are applied in the order it queued them; Wait gives each
// one's result, exactly as Append would have returned it (a wrong expected revision is refused
// and writes nothing). Only a store opened WithBulkLoad takes them: a caller that does not wait
// for its commit has no use for the default mode's durability per commit.
func (s *Store) AppendNoWait(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (*PendingAppend, error) {
	if !s.opts.bulk {
		return nil, errors.New("append without waiting: the store is not in bulk-load mode")
	}
	if stream == "" {
		return nil, errors.New("append: empty stream name")
	}
	req := &appendRequest{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan appendReply, 1)}
	s.sendMu.RLock()
	defer s.sendMu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("append to %q: %w", stream, eventstore.ErrClosed)
	}
	select {
	case s.queue <- req:
		return &PendingAppend{req: req}, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("append to %q: %w", stream, ctx.Err())
	}
}

// Done reports whether the append's result is in (Wait then returns at once).
func (p *PendingAppend) Done() bool {
	if p.reply != nil {
		return true
	}
	select {
	case r := <-p.req.done:
		p.reply = &r
		return true
	default:
		return false
	}
}

// Wait returns the append's result once its commit is over, or ctx's error if ctx ends first
// (the append may then still be committed). It may be called again and returns the same.
func (p *PendingAppend) Wait(ctx context.Context) (eventstore.AppendResult, error) {
	if p.reply == nil {
		select {
		case r := <-p.req.done:
			p.reply = &r
		case <-ctx.Done():
			return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", p.req.stream, ctx.Err())
		}
	}
	return p.reply.result, p.reply.err
}
