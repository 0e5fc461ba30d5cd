// Package embedded holds Tally's durable embedded event store: the eventstore port on one SQLite
// database (modernc.org/sqlite, pure Go) in WAL mode with synchronous=FULL. A single writer
// goroutine folds concurrent appends into group commits; readers read committed data only.
// Catch-up subscriptions are woken in-process after each commit and take the events just
// committed from a bounded in-memory tail that the writer fills after COMMIT, reading the
// database only when they are behind it. An exclusive flock on the data directory keeps a second
// process out.
package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/tallyledger/tally/domain/eventstore"
)

// DatabaseFile is the name of the SQLite database inside the data directory.
const DatabaseFile = "events.db"

// lockFile is the file in the data directory that holds the exclusive flock.
const lockFile = "LOCK"

// schemaVersion is stored in PRAGMA user_version; a database from a newer Tally is refused, one
// from an older one is migrated when it is opened (migrate.go).
const schemaVersion = 2

// queueLength is how many appends may wait for the writer before Append blocks on the queue.
const queueLength = 4096

// ErrLocked is matched by Open when another process (or another Store in this process) holds
// the data directory.
var ErrLocked = errors.New("event store data directory is locked by another process")

// Option tunes Open.
type Option func(*options)

type options struct {
	maxBatch   int
	readConns  int
	pageSize   int
	tailEvents int
	tailBytes  int
	bulk       bool
	logger     *slog.Logger
	// migrationProgress is how many events a migration copies between two progress lines.
	migrationProgress int
}

// WithLogger sets where the store logs what it does at Open beyond opening: the migration of a
// database from an older build, and its progress. The default logs nothing.
func WithLogger(logger *slog.Logger) Option {
	return func(o *options) {
		if logger != nil {
			o.logger = logger
		}
	}
}

// WithMaxBatch caps how many appends one group commit takes (default 1024).
func WithMaxBatch(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxBatch = n
		}
	}
}

// WithReadConnections sets how many SQLite connections serve reads and subscriptions
// (default 4).
func WithReadConnections(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.readConns = n
		}
	}
}

// WithSubscriptionPage sets how many events a subscription reads from the database at a time
// (default 512); it bounds each subscriber's memory.
func WithSubscriptionPage(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.pageSize = n
		}
	}
}

// WithSubscriptionTail bounds the in-memory tail of recently committed events that live
// subscriptions read instead of the database (default 8192 events and 8 MiB of payload). Zero
// for either turns the tail off: every subscription then reads the database.
func WithSubscriptionTail(maxEvents, maxBytes int) Option {
	return func(o *options) {
		if maxEvents >= 0 && maxBytes >= 0 {
			o.tailEvents, o.tailBytes = maxEvents, maxBytes
		}
	}
}

// Store is the embedded event store. It is safe for concurrent use.
type Store struct {
	dir  string
	lock *os.File

	writeDB *sql.DB // one connection, used only by the writer goroutine
	readDB  *sql.DB // pool for ReadStream, ReadAll and subscriptions
	reads   readStatements
	// replayConns read the ranges of a replay (rawread.go).
	replayConns rawConns

	// streams and types turn the integer ids of event rows back into names (names.go).
	streams, types *nameTable

	// queue carries appends to the writer; sendMu (read-locked by senders) keeps Close from
	// closing it under a sender.
	queue      chan *appendRequest
	sendMu     sync.RWMutex
	closed     bool
	closing    chan struct{} // closed when Close starts: wakes subscribers
	writerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error

	// headMu guards head, the last committed position; wake, closed and replaced after every
	// commit that wrote events so that waiting subscribers look again; and tail, the last
	// committed events, which changes together with head.
	headMu sync.Mutex
	head   eventstore.Position
	wake   chan struct{}
	tail   memoryTail

	opts  options
	stats counters
}

var _ eventstore.Store = (*Store)(nil)

// Open opens (creating if needed) the store whose database lives in dir/events.db. It takes an
// exclusive lock on dir; a dir already open elsewhere gives an error matching ErrLocked.
func Open(ctx context.Context, dir string, opts ...Option) (*Store, error) {
	o := options{maxBatch: 1024, readConns: 4, pageSize: 512, tailEvents: 8192, tailBytes: 8 << 20, migrationProgress: 1 << 20}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if err := makePrivateDir(dir); err != nil {
		return nil, fmt.Errorf("open event store: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Store{
		dir:        dir,
		lock:       lock,
		queue:      make(chan *appendRequest, queueLength),
		closing:    make(chan struct{}),
		writerDone: make(chan struct{}),
		wake:       make(chan struct{}),
		tail:       memoryTail{maxEvents: o.tailEvents, maxBytes: o.tailBytes},
		streams:    newNameTable("streams"),
		types:      newNameTable("event_types"),
		opts:       o,
	}
	if err := s.openDatabases(ctx); err != nil {
		s.closeDatabases()
		_ = unlockDir(lock)
		return nil, err
	}
	w, err := newWriter(ctx, s)
	if err != nil {
		s.closeDatabases()
		_ = unlockDir(lock)
		return nil, err
	}
	s.head = w.lastPosition
	s.tail.reset(s.head)
	go w.run()
	return s, nil
}

// lockDir takes the exclusive, non-blocking flock that keeps a second opener out. The kernel
// drops it when the process dies, so a crash never leaves a stale lock behind.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, privateFileMode)
	if err != nil {
		return nil, fmt.Errorf("open event store lock %s: %w", path, err)
	}
	if err := f.Chmod(privateFileMode); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("event store lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("open event store in %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("lock event store %s: %w", path, err)
	}
	return f, nil
}

func unlockDir(f *os.File) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		_ = f.Close()
		return fmt.Errorf("unlock event store: %w", err)
	}
	return f.Close()
}

// privateFileMode is the mode of every file of the store: the events hold every license key.
const privateFileMode os.FileMode = 0o600

// makePrivateDir creates dir (mode 0700) or makes an existing one owner-only.
func makePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, fi.Mode().Perm()&0o700); err != nil {
			return fmt.Errorf("make %s owner-only: %w", dir, err)
		}
	}
	return nil
}

// createPrivateFile creates path empty with mode 0600 if it does not exist, and makes it
// owner-only if it does; a symlink is refused (O_NOFOLLOW).
func createPrivateFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, privateFileMode)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	err = f.Chmod(privateFileMode) // the umask may have taken bits away, never added: this is for old files
	return errors.Join(err, f.Close())
}

// tightenFile makes an existing file owner-only; a missing one is left missing.
func tightenFile(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symlink", path)
	}
	if fi.Mode().Perm() != privateFileMode {
		if err := os.Chmod(path, privateFileMode); err != nil {
			return fmt.Errorf("make %s owner-only: %w", path, err)
		}
	}
	return nil
}

// walCheckpointPages is how many WAL pages (4 KiB each) trigger an automatic checkpoint: the WAL
// grows to about 40 MiB before the writer copies it into the database file.
const walCheckpointPages = 10000

// dsn builds the connection string: WAL so readers never block the writer and see only
// committed (and, with synchronous=FULL, fsynced) transactions.
func dsn(path string, readOnly, bulk bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	if bulk {
		for _, pragma := range bulkPragmas(readOnly) {
			q.Add("_pragma", pragma)
		}
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(FULL)")
		q.Add("_pragma", "cache_size(-16384)") // 16 MiB a connection
		// Checkpoint the WAL every walCheckpointPages pages instead of SQLite's 1000: each
		// commit rewrites the same few hot pages (the table's last leaf, the streams' index
		// leaves), and a checkpoint copies a page once however often the WAL holds it, so
		// rarer checkpoints copy far less per event.
		q.Add("_pragma", fmt.Sprintf("wal_autocheckpoint(%d)", walCheckpointPages))
	}
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

func (s *Store) openDatabases(ctx context.Context) error {
	path := filepath.Join(s.dir, DatabaseFile)
	// SQLite creates a new database file with mode 0644 and its -wal and -shm with the
	// database file's mode: an owner-only database file first makes all three owner-only.
	if err := createPrivateFile(path); err != nil {
		return fmt.Errorf("event database: %w", err)
	}
	// Files an older Tally left readable by others are made owner-only.
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := tightenFile(path + suffix); err != nil {
			return fmt.Errorf("event database: %w", err)
		}
	}
	if err := s.prepareSchema(ctx, path); err != nil {
		return fmt.Errorf("event database %s: %w", path, err)
	}
	var err error
	if s.writeDB, err = sql.Open("sqlite", dsn(path, false, s.opts.bulk)); err != nil {
		return fmt.Errorf("open event database %s: %w", path, err)
	}
	s.writeDB.SetMaxOpenConns(1)
	s.writeDB.SetMaxIdleConns(1)
	s.writeDB.SetConnMaxLifetime(0)
	s.writeDB.SetConnMaxIdleTime(0)
	// The writer's connection opens before any reader's: in a bulk load it leaves WAL mode,
	// which it can only while no other connection is open.
	if err := s.writeDB.PingContext(ctx); err != nil {
		return fmt.Errorf("open event database %s: %w", path, err)
	}
	if s.readDB, err = sql.Open("sqlite", dsn(path, true, s.opts.bulk)); err != nil {
		return fmt.Errorf("open event database %s for reading: %w", path, err)
	}
	s.readDB.SetMaxOpenConns(s.opts.readConns)
	s.readDB.SetMaxIdleConns(s.opts.readConns)
	s.readDB.SetConnMaxIdleTime(0)
	s.readDB.SetConnMaxLifetime(0)
	s.replayConns.path = path
	if err := s.reads.prepare(ctx, s.readDB); err != nil {
		return fmt.Errorf("event database %s: %w", path, err)
	}
	return nil
}

func (s *Store) closeDatabases() error {
	errs := []error{s.replayConns.close()}
	s.reads.close()
	if s.readDB != nil {
		errs = append(errs, s.readDB.Close())
	}
	if s.writeDB != nil {
		errs = append(errs, s.writeDB.Close())
	}
	return errors.Join(errs...)
}

// Close stops taking appends, lets the writer commit those already queued (their callers get
// their real results), ends subscriptions with ErrClosed, closes the database and releases the
// directory lock. Calls after Close fail with ErrClosed; a second Close returns nil.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.sendMu.Lock()
		s.closed = true
		close(s.queue)
		close(s.closing)
		s.sendMu.Unlock()
		<-s.writerDone
		var synced error
		if s.opts.bulk {
			synced = s.syncBulkLoad()
		}
		s.closeErr = errors.Join(synced, s.closeDatabases(), unlockDir(s.lock))
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("close event store: %w", s.closeErr)
		}
	})
	return s.closeErr
}

// isClosing reports whether Close has started.
func (s *Store) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// closedError turns an error met while Close runs into ErrClosed, so callers see one error.
func (s *Store) closedError(err error) error {
	if s.isClosing() {
		return fmt.Errorf("%w (%v)", eventstore.ErrClosed, err)
	}
	return err
}

// committedHead returns the last committed position and a channel closed by the next commit
// that writes events.
func (s *Store) committedHead() (eventstore.Position, <-chan struct{}) {
	s.headMu.Lock()
	defer s.headMu.Unlock()
	return s.head, s.wake
}

// committedAfter is committedHead plus up to max of the committed events after position from
// the in-memory tail; inTail is false when position is behind the tail, and the caller must
// read the database for the events after it. The events are shared: see memoryTail.
func (s *Store) committedAfter(position eventstore.Position, max int) (events []eventstore.RecordedEvent, inTail bool, head eventstore.Position, wake <-chan struct{}) {
	s.headMu.Lock()
	defer s.headMu.Unlock()
	events, inTail = s.tail.eventsAfter(position, max)
	return events, inTail, s.head, s.wake
}

// publish makes a commit visible to waiting subscribers: the head moves from after to head, and
// events (nil if the writer did not keep them) are the committed events in between, holding
// bytes of payload. The writer calls it only after COMMIT succeeded.
func (s *Store) publish(after, head eventstore.Position, events []eventstore.RecordedEvent, bytes int) {
	s.headMu.Lock()
	s.head = head
	s.tail.push(after, head, events, bytes)
	close(s.wake)
	s.wake = make(chan struct{})
	s.headMu.Unlock()
}

// Head returns the position of the last committed event (Start for an empty store); it
// implements eventstore.HeadReader without reading the database.
func (s *Store) Head(ctx context.Context) (eventstore.Position, error) {
	if err := ctx.Err(); err != nil {
		return eventstore.Start, err
	}
	head, _ := s.committedHead()
	return head, nil
}

// Stats are cumulative counters of the write path since Open.
type Stats struct {
	Appends      uint64 // appends acknowledged (idempotent repeats included)
	Events       uint64 // events written
	Refused      uint64 // appends refused for their expected revision
	Failed       uint64 // appends failed by a commit or database error
	Batches      uint64 // group commits that wrote events
	MaxBatchSize uint64 // most appends taken by one group commit

	TailPages     uint64 // runs of events subscriptions took from the in-memory tail
	DatabasePages uint64 // pages subscriptions read from the database (behind the tail)
}

type counters struct {
	appends, events, refused, failed, batches, maxBatch atomic.Uint64
	tailPages, databasePages                            atomic.Uint64
}

// Stats returns the write-path counters; mean batch size is Appends/Batches.
func (s *Store) Stats() Stats {
	return Stats{
		Appends:      s.stats.appends.Load(),
		Events:       s.stats.events.Load(),
		Refused:      s.stats.refused.Load(),
		Failed:       s.stats.failed.Load(),
		Batches:      s.stats.batches.Load(),
		MaxBatchSize: s.stats.maxBatch.Load(),

		TailPages:     s.stats.tailPages.Load(),
		DatabasePages: s.stats.databasePages.Load(),
	}
}
