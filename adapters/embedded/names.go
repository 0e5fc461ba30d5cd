package embedded

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync/atomic"
)

// nameTable is one of the schema's id <-> name tables (streams, event_types) as the store keeps
// it in memory: an event row holds a small integer, and every reader turns it back into the
// name from here, handing out the one shared string instead of reading and allocating the name
// per row.
//
// Ids are dense from 1 and given out by the single writer inside its transaction. The writer
// publishes a new name before the transaction that inserts it commits, so a reader that sees a
// committed row referring to an id always finds its name; when the transaction rolls back, the
// writer takes its names back out (forget), so the cache never holds an id the database does
// not. Readers load the published slice without a lock: it is only ever extended in place
// beyond what earlier readers saw, or replaced by a copy.
type nameTable struct {
	table string                   // the SQL table
	names atomic.Pointer[[]string] // names[id]; names[0] is unused
}

func newNameTable(table string) *nameTable {
	t := &nameTable{table: table}
	t.names.Store(&[]string{""})
	return t
}

// load returns the published names; index it with an id.
func (t *nameTable) load() []string { return *t.names.Load() }

// name returns id's name using names, a slice load returned, and reloads it when id is newer
// than names (a row committed after names was loaded); it returns the slice it used, for the
// next row.
func (t *nameTable) name(names []string, id int64) (string, []string, error) {
	if id > 0 && id < int64(len(names)) {
		return names[id], names, nil
	}
	names = t.load()
	if id > 0 && id < int64(len(names)) {
		return names[id], names, nil
	}
	return "", names, fmt.Errorf("%s id %d is not in the database", t.table, id)
}

// readAll loads the table's committed names at Open.
func (t *nameTable) readAll(ctx context.Context, conn *sql.Conn) error {
	rows, err := conn.QueryContext(ctx, `SELECT id, name FROM `+t.table+` ORDER BY id`)
	if err != nil {
		return fmt.Errorf("read %s: %w", t.table, err)
	}
	defer rows.Close()
	names := []string{""}
	for rows.Next() {
		var id int64
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			return fmt.Errorf("read %s: %w", t.table, err)
		}
		if id != int64(len(names)) {
			return fmt.Errorf("read %s: id %d follows %d: the ids are not dense", t.table, id, len(names)-1)
		}
		names = append(names, name)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read %s: %w", t.table, err)
	}
	t.names.Store(&names)
	return nil
}

// nameWriter is the writer's side of a nameTable: the name -> id map, and the names its open
// transaction added, which it inserts (rows) and, if the transaction rolls back, forgets.
type nameWriter struct {
	table     *nameTable
	ids       map[string]int64
	names     []string // as published
	committed int      // len(names) when the open transaction began
	rows      []any    // id, name of the names not yet inserted
}

func newNameWriter(t *nameTable) *nameWriter {
	names := t.load()
	w := &nameWriter{table: t, ids: make(map[string]int64, len(names)), names: names, committed: len(names)}
	for id, name := range names[1:] {
		w.ids[name] = int64(id + 1)
	}
	return w
}

// lookup returns name's id, and false when the database (as the open transaction sees it) has
// no such name.
func (w *nameWriter) lookup(name string) (int64, bool) {
	id, ok := w.ids[name]
	return id, ok
}

// id returns name's id, giving the next one out (and publishing it) if name is new.
func (w *nameWriter) id(name string) int64 {
	if id, ok := w.ids[name]; ok {
		return id
	}
	id := int64(len(w.names))
	w.names = append(w.names, name)
	w.ids[name] = id
	w.rows = append(w.rows, id, name)
	published := w.names
	w.table.names.Store(&published)
	return id
}

// commit makes the open transaction's names permanent: called after COMMIT.
func (w *nameWriter) commit() {
	w.committed = len(w.names)
	w.rows = w.rows[:0]
}

// rollback forgets the names the rolled-back transaction gave ids to. The published slice is
// replaced by a copy, so that the ids given out again later never write into an array a reader
// may still hold.
func (w *nameWriter) rollback() {
	for _, name := range w.names[w.committed:] {
		delete(w.ids, name)
	}
	w.names = slices.Clone(w.names[:w.committed])
	published := w.names
	w.table.names.Store(&published)
	clear(w.rows)
	w.rows = w.rows[:0]
}
