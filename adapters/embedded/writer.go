package embedded

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain/eventstore"
)

// maxCachedStreams bounds the writer's cache of stream heads; past it the cache starts over.
const maxCachedStreams = 1 << 16

// appendRequest is one Append waiting for the writer.
type appendRequest struct {
	ctx      context.Context
	stream   string
	expected eventstore.ExpectedRevision
	events   []eventstore.EventData
	done     chan appendReply // buffered: the writer never waits for the caller
}

type appendReply struct {
	result eventstore.AppendResult
	err    error
}

// Append queues the append for the writer's next group commit and waits for its result. When it
// returns nil the transaction holding the events has been committed with synchronous=FULL.
// If ctx ends first, ctx's error is returned and the append may or may not have been
// committed; retrying with the same event IDs and an exact expected revision is safe.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	if stream == "" {
		return eventstore.AppendResult{}, errors.New("append: empty stream name")
	}
	req := &appendRequest{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan appendReply, 1)}
	s.sendMu.RLock()
	if s.closed {
		s.sendMu.RUnlock()
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, eventstore.ErrClosed)
	}
	select {
	case s.queue <- req:
	case <-ctx.Done():
		s.sendMu.RUnlock()
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, ctx.Err())
	}
	s.sendMu.RUnlock()
	select {
	case reply := <-req.done:
		return reply.result, reply.err
	case <-ctx.Done():
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, ctx.Err())
	}
}

// streamHead is a stream's last revision and that event's position; exists is false for a
// stream with no events.
type streamHead struct {
	revision uint64
	position eventstore.Position
	exists   bool
}

// writer is the single goroutine that owns the write connection.
type writer struct {
	store *Store
	conn  *sql.Conn

	headStmt, rangeStmt *sql.Stmt

	// events, metadata and the name tables' inserts hold the open transaction's rows not yet
	// inserted: they go in with multi-row INSERTs (flushRows), since one statement per event
	// costs most of a commit in the driver's per-call work.
	events, metadata *batchInsert
	streamNames      *batchInsert
	typeNames        *batchInsert

	// streams and types give the ids of names, new ones included (names.go).
	streams, types *nameWriter
	// sharedMetadata maps the metadata bodies the open transaction stored to their row (the
	// position of the first event that carried it), so that the events of an append, and
	// any other event of the transaction with the same metadata, share it.
	sharedMetadata map[string]sharedBody

	// heads caches stream heads as of the open transaction; it is dropped when a transaction
	// rolls back, since it may hold uncommitted heads.
	heads        map[string]streamHead
	lastPosition eventstore.Position

	batch   []*appendRequest
	replies []appendReply

	// kept collects the open transaction's events for the subscriptions' in-memory tail while
	// keeping is set; arena holds copies of their payloads, so that callers may reuse their
	// buffers once Append returns. Both are handed over by publish after COMMIT and never
	// touched again; a batch that fails drops them.
	keeping   bool
	kept      []eventstore.RecordedEvent
	keptBytes int
	arena     []byte
}

// sharedBody is a metadata body the open transaction stored: its row, and its copy in the arena
// when the transaction's events are kept for the tail.
type sharedBody struct {
	row  int64
	kept []byte
}

func newWriter(ctx context.Context, s *Store) (*writer, error) {
	conn, err := s.writeDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("event store writer connection: %w", err)
	}
	w := &writer{
		store: s, conn: conn, heads: make(map[string]streamHead), sharedMetadata: make(map[string]sharedBody),
		events:      newBatchInsert(conn, "events", "position, stream, revision, id, type, data, metadata, recorded"),
		metadata:    newBatchInsert(conn, "metadata", "id, body"),
		streamNames: newBatchInsert(conn, "streams", "id, name"),
		typeNames:   newBatchInsert(conn, "event_types", "id, name"),
	}
	if err = errors.Join(s.streams.readAll(ctx, conn), s.types.readAll(ctx, conn)); err != nil {
		w.close()
		return nil, fmt.Errorf("event store writer: %w", err)
	}
	w.streams, w.types = newNameWriter(s.streams), newNameWriter(s.types)
	prepare := func(query string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var stmt *sql.Stmt
		stmt, err = conn.PrepareContext(ctx, query)
		return stmt
	}
	w.headStmt = prepare(`SELECT revision, position FROM events WHERE stream = ? ORDER BY revision DESC LIMIT 1`)
	w.rangeStmt = prepare(`SELECT id, position FROM events WHERE stream = ? AND revision >= ? AND revision <= ? ORDER BY revision`)
	if err == nil {
		var last sql.NullInt64
		err = conn.QueryRowContext(ctx, `SELECT max(position) FROM events`).Scan(&last)
		w.lastPosition = eventstore.Position(last.Int64)
	}
	if err != nil {
		w.close()
		return nil, fmt.Errorf("event store writer: %w", err)
	}
	return w, nil
}

func (w *writer) close() {
	for _, stmt := range []*sql.Stmt{w.headStmt, w.rangeStmt} {
		if stmt != nil {
			_ = stmt.Close()
		}
	}
	for _, insert := range []*batchInsert{w.events, w.metadata, w.streamNames, w.typeNames} {
		insert.close()
	}
	_ = w.conn.Close()
}

// run takes the first queued append, then whatever else is already queued (up to maxBatch), and
// commits them in one transaction: appends that arrive while a commit's fsync runs form the
// next batch, so the fsync cost is shared. Before it looks at the queue it yields the processor
// once, so that callers already running towards Append (runnable, not yet queued) join this
// commit rather than each paying for one of their own; with nothing else to run the yield
// returns at once, so an idle store adds no latency. It returns when Close has closed the queue
// and the queue is drained.
func (w *writer) run() {
	defer close(w.store.writerDone)
	defer w.close()
	for {
		req, ok := <-w.store.queue
		if !ok {
			return
		}
		w.batch = append(w.batch[:0], req)
		runtime.Gosched()
	fill:
		for len(w.batch) < w.store.opts.maxBatch {
			select {
			case req, ok := <-w.store.queue:
				if !ok {
					break fill
				}
				w.batch = append(w.batch, req)
			default:
				break fill
			}
		}
		w.commitBatch()
	}
}

// commitBatch applies each append of the batch in order inside one transaction, commits, and
// only then answers the callers and wakes subscribers, handing them the committed events for
// the in-memory tail. An append refused for its expected revision writes nothing and does not
// affect the others; a database error fails the whole batch (nothing of it is committed, and
// nothing of it reaches a subscriber).
func (w *writer) commitBatch() {
	ctx := context.Background()
	w.replies = w.replies[:0]
	for range w.batch {
		w.replies = append(w.replies, appendReply{})
	}
	nextPosition := w.lastPosition + 1
	recorded := time.Now().UnixNano()
	recordedTime := time.Unix(0, recorded).UTC() // as ReadAll decodes it
	written, events := 0, 0
	w.startKeeping()

	err := w.exec(ctx, "BEGIN IMMEDIATE")
	if err == nil {
		for i, req := range w.batch {
			if err = req.ctx.Err(); err != nil {
				w.replies[i].err = fmt.Errorf("append to %q: %w", req.stream, err)
				err = nil
				continue
			}
			var result eventstore.AppendResult
			var n int
			result, n, err = w.apply(ctx, req, &nextPosition, recorded, recordedTime)
			if err != nil {
				var refused *eventstore.WrongExpectedVersionError
				if errors.As(err, &refused) {
					w.replies[i].err = err
					err = nil
					continue
				}
				break
			}
			w.replies[i].result = result
			if n > 0 {
				written++
				events += n
			}
		}
	}
	if err == nil && written > 0 {
		err = w.flushRows(ctx)
	}
	if err == nil {
		if written > 0 {
			err = w.exec(ctx, "COMMIT")
		} else {
			err = w.exec(ctx, "ROLLBACK") // nothing to make durable
		}
	}
	for _, insert := range []*batchInsert{w.events, w.metadata, w.streamNames, w.typeNames} {
		insert.discard()
	}
	clear(w.sharedMetadata)
	if err != nil {
		_ = w.exec(ctx, "ROLLBACK")
		clear(w.heads)
		w.forgetNames(ctx)
		err = fmt.Errorf("event store commit: %w", w.store.closedError(err))
		for i := range w.replies {
			if w.replies[i].err == nil || errors.Is(w.replies[i].err, eventstore.ErrWrongExpectedVersion) {
				// A refusal may have rested on an append of this batch that is now rolled back.
				w.replies[i] = appendReply{err: err}
			}
		}
		w.store.stats.failed.Add(uint64(len(w.batch)))
	} else {
		// Names are given ids only for events written, so a batch that wrote none (and
		// rolled back) gave none out.
		w.streams.commit()
		w.types.commit()
	}
	if err == nil && written > 0 {
		after := w.lastPosition
		w.lastPosition = nextPosition - 1
		var kept []eventstore.RecordedEvent
		if w.keeping {
			kept = w.kept
		}
		w.store.publish(after, w.lastPosition, kept, w.keptBytes)
		w.store.stats.batches.Add(1)
		w.store.stats.events.Add(uint64(events))
		if size := uint64(len(w.batch)); size > w.store.stats.maxBatch.Load() {
			w.store.stats.maxBatch.Store(size)
		}
	}
	// Published or failed, the kept events are no longer the writer's.
	w.keeping, w.kept, w.keptBytes, w.arena = false, nil, 0, nil
	if len(w.heads) > maxCachedStreams {
		clear(w.heads)
	}
	for i, req := range w.batch {
		reply := w.replies[i]
		switch {
		case reply.err == nil:
			w.store.stats.appends.Add(1)
		case errors.Is(reply.err, eventstore.ErrWrongExpectedVersion):
			w.store.stats.refused.Add(1)
		}
		req.done <- reply
		w.batch[i] = nil
	}
}

// forgetNames drops the names the failed transaction gave ids to. It reads the name tables
// again, as the database now holds them, rather than trusting memory: a COMMIT that failed may
// have become durable all the same. If even that read fails, the names are taken out of memory.
func (w *writer) forgetNames(ctx context.Context) {
	if err := errors.Join(w.store.streams.readAll(ctx, w.conn), w.store.types.readAll(ctx, w.conn)); err != nil {
		w.streams.rollback()
		w.types.rollback()
		return
	}
	w.streams, w.types = newNameWriter(w.store.streams), newNameWriter(w.store.types)
}

// startKeeping decides whether the batch's events go to the in-memory tail, from an upper
// bound of what it can write, and if so sizes the buffers for them once.
func (w *writer) startKeeping() {
	tail := &w.store.tail // maxEvents and maxBytes never change after Open
	if !tail.enabled() {
		return
	}
	events, payload, bytes := 0, 0, 0
	for _, req := range w.batch {
		events += len(req.events)
		for _, ev := range req.events {
			payload += len(ev.Data) + len(ev.Metadata)
			bytes += len(ev.Data) + len(ev.Metadata) + len(req.stream) + len(ev.Type)
		}
	}
	if !tail.fits(events, bytes) {
		return
	}
	w.keeping = true
	w.kept = make([]eventstore.RecordedEvent, 0, events)
	w.arena = make([]byte, 0, payload)
}

// keep copies a payload into the batch's arena, as ReadAll returns it: nil when empty, since
// the database driver scans an empty blob as nil.
func (w *writer) keep(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	start := len(w.arena)
	w.arena = append(w.arena, b...) // within the capacity startKeeping reserved
	return w.arena[start:len(w.arena):len(w.arena)]
}

func (w *writer) exec(ctx context.Context, query string) error {
	_, err := w.conn.ExecContext(ctx, query)
	return err
}

// apply checks one append's expected revision against the stream as the open transaction sees
// it and inserts its events. It returns how many events it wrote: none for an empty or an
// idempotent append. A refusal is a *WrongExpectedVersionError.
func (w *writer) apply(ctx context.Context, req *appendRequest, nextPosition *eventstore.Position, recorded int64, recordedTime time.Time) (eventstore.AppendResult, int, error) {
	head, err := w.head(ctx, req.stream)
	if err != nil {
		return eventstore.AppendResult{}, 0, err
	}
	if !req.expected.Matches(head.revision, head.exists) {
		return w.idempotent(ctx, req, head)
	}
	if len(req.events) == 0 {
		return eventstore.AppendResult{NextExpectedRevision: head.revision, Position: head.position}, 0, nil
	}
	revision := uint64(0)
	if head.exists {
		revision = head.revision + 1
	}
	position := *nextPosition
	stream := w.streams.id(req.stream)
	for _, ev := range req.events {
		id := ev.ID
		if id == uuid.Nil {
			id = uuid.New() // as KurrentDB's client does
		}
		metadata, keptMetadata := w.shareMetadata(ev.Metadata, position)
		if w.events.add(int64(position), stream, int64(revision), id[:], w.types.id(ev.Type), nonNil(ev.Data), metadata, recorded) {
			if err := w.flushRows(ctx); err != nil {
				return eventstore.AppendResult{}, 0, err
			}
		}
		if w.keeping {
			w.kept = append(w.kept, eventstore.RecordedEvent{
				ID: id, Type: ev.Type, Data: w.keep(ev.Data), Metadata: keptMetadata,
				Stream: req.stream, Revision: revision, Position: position, Recorded: recordedTime,
			})
			w.keptBytes += len(ev.Data) + len(ev.Metadata) + len(req.stream) + len(ev.Type)
		}
		revision++
		position++
	}
	*nextPosition = position
	head = streamHead{revision: revision - 1, position: position - 1, exists: true}
	w.heads[req.stream] = head
	return eventstore.AppendResult{NextExpectedRevision: head.revision, Position: head.position}, len(req.events), nil
}

// shareMetadata returns the metadata reference of an event at position: nil for empty
// metadata, else the row of the transaction's first event with the same body, which it stores
// if this event is that first one. keptCopy is the body's copy for the tail (nil when empty or
// not keeping), one per body too.
func (w *writer) shareMetadata(body []byte, position eventstore.Position) (ref any, keptCopy []byte) {
	if len(body) == 0 {
		return nil, nil
	}
	if shared, ok := w.sharedMetadata[string(body)]; ok {
		return shared.row, shared.kept
	}
	shared := sharedBody{row: int64(position)}
	if w.keeping {
		shared.kept = w.keep(body)
	}
	w.metadata.add(shared.row, body) // inserted with the events (flushRows)
	w.sharedMetadata[string(body)] = shared
	return shared.row, shared.kept
}

// idempotent handles an append whose expected revision does not match. As in KurrentDB, an
// append with an exact expected revision (or NoStream) whose event IDs are exactly the events
// already following that revision is a retry of a committed append: it succeeds with the
// original result and writes nothing. Anything else is refused.
func (w *writer) idempotent(ctx context.Context, req *appendRequest, head streamHead) (eventstore.AppendResult, int, error) {
	// The events it compares with may be among those of this transaction not yet inserted.
	if err := w.flushRows(ctx); err != nil {
		return eventstore.AppendResult{}, 0, err
	}
	refuse := &eventstore.WrongExpectedVersionError{
		Stream: req.stream, Expected: req.expected,
		Actual: head.revision, ActualExists: head.exists, ActualKnown: true,
	}
	var first uint64
	if exact, ok := req.expected.IsExact(); ok {
		if exact >= math.MaxInt64 {
			return eventstore.AppendResult{}, 0, refuse // no stream gets that far (and +1 would wrap)
		}
		first = exact + 1
	} else if !req.expected.IsNoStream() {
		return eventstore.AppendResult{}, 0, refuse
	}
	n := uint64(len(req.events))
	if n == 0 || !head.exists || head.revision < first || head.revision-first+1 < n {
		return eventstore.AppendResult{}, 0, refuse
	}
	stream, _ := w.streams.lookup(req.stream) // the stream exists (head.exists)
	rows, err := w.rangeStmt.QueryContext(ctx, stream, int64(first), int64(first+n-1))
	if err != nil {
		return eventstore.AppendResult{}, 0, fmt.Errorf("read %q for idempotency: %w", req.stream, err)
	}
	defer rows.Close()
	var matched uint64
	var position int64
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id, &position); err != nil {
			return eventstore.AppendResult{}, 0, fmt.Errorf("read %q for idempotency: %w", req.stream, err)
		}
		if matched >= n || !bytesEqualID(id, req.events[matched].ID) {
			return eventstore.AppendResult{}, 0, refuse
		}
		matched++
	}
	if err := rows.Err(); err != nil {
		return eventstore.AppendResult{}, 0, fmt.Errorf("read %q for idempotency: %w", req.stream, err)
	}
	if matched != n {
		return eventstore.AppendResult{}, 0, refuse
	}
	return eventstore.AppendResult{NextExpectedRevision: first + n - 1, Position: eventstore.Position(position)}, 0, nil
}

// head returns the stream's head as the open transaction sees it, from the cache when it can.
func (w *writer) head(ctx context.Context, stream string) (streamHead, error) {
	if head, ok := w.heads[stream]; ok {
		return head, nil
	}
	var head streamHead
	id, ok := w.streams.lookup(stream)
	if !ok { // a stream with no id has no events
		w.heads[stream] = head
		return head, nil
	}
	var revision, position int64
	err := w.headStmt.QueryRowContext(ctx, id).Scan(&revision, &position)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return streamHead{}, fmt.Errorf("read head of %q: %w", stream, err)
	default:
		head = streamHead{revision: uint64(revision), position: eventstore.Position(position), exists: true}
	}
	w.heads[stream] = head
	return head, nil
}

// flushRows inserts the buffered rows, names first (an event row's trigger may look its type
// up). A failure fails the whole transaction (the caller rolls it back), as a failed single-row
// insert did.
func (w *writer) flushRows(ctx context.Context) error {
	for _, names := range []struct {
		insert *batchInsert
		names  *nameWriter
	}{{w.streamNames, w.streams}, {w.typeNames, w.types}} {
		for i := 0; i < len(names.names.rows); i += 2 {
			names.insert.add(names.names.rows[i], names.names.rows[i+1])
		}
		clear(names.names.rows)
		names.names.rows = names.names.rows[:0]
	}
	for _, insert := range []*batchInsert{w.streamNames, w.typeNames, w.metadata, w.events} {
		if err := insert.flush(ctx); err != nil {
			return err
		}
	}
	return nil
}

// maxParameters is how many values one INSERT binds at most, well under SQLite's limit of
// 32,766: 64 event rows.
const maxParameters = 512

// batchInsert buffers rows for one table and inserts them with multi-row INSERTs, a prepared
// statement per row count.
type batchInsert struct {
	conn    *sql.Conn
	table   string
	columns string
	width   int // values per row
	rows    []any
	stmts   map[int]*sql.Stmt
}

func newBatchInsert(conn *sql.Conn, table, columns string) *batchInsert {
	return &batchInsert{conn: conn, table: table, columns: columns, width: strings.Count(columns, ",") + 1, stmts: make(map[int]*sql.Stmt)}
}

// add buffers one row (width values) and reports whether the buffer holds a full statement.
func (b *batchInsert) add(values ...any) (full bool) {
	b.rows = append(b.rows, values...)
	return len(b.rows) >= maxParameters/b.width*b.width
}

// flush inserts the buffered rows.
func (b *batchInsert) flush(ctx context.Context) error {
	rows := b.rows
	defer b.discard()
	perInsert := maxParameters / b.width
	for len(rows) > 0 {
		n := min(len(rows)/b.width, perInsert)
		stmt, err := b.statement(ctx, n)
		if err != nil {
			return err
		}
		if _, err := stmt.ExecContext(ctx, rows[:n*b.width]...); err != nil {
			return fmt.Errorf("insert %d rows into %s: %w", n, b.table, err)
		}
		rows = rows[n*b.width:]
	}
	return nil
}

// discard drops the buffered rows (and the callers' payloads they hold).
func (b *batchInsert) discard() {
	clear(b.rows)
	b.rows = b.rows[:0]
}

// statement returns the prepared INSERT of n rows.
func (b *batchInsert) statement(ctx context.Context, n int) (*sql.Stmt, error) {
	if stmt := b.stmts[n]; stmt != nil {
		return stmt, nil
	}
	one := "(?" + strings.Repeat(", ?", b.width-1) + ")"
	query := "INSERT OR FAIL INTO " + b.table + " (" + b.columns + ") VALUES " + strings.Repeat(one+", ", n-1) + one
	stmt, err := b.conn.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("prepare insert of %d rows into %s: %w", n, b.table, err)
	}
	b.stmts[n] = stmt
	return stmt, nil
}

func (b *batchInsert) close() {
	for _, stmt := range b.stmts {
		_ = stmt.Close()
	}
	clear(b.stmts)
}

func bytesEqualID(stored []byte, id uuid.UUID) bool {
	return len(stored) == len(id) && string(stored) == string(id[:])
}

// nonNil stores a missing payload as an empty blob (the columns are NOT NULL).
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
