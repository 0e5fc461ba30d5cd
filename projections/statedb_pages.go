package projections

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"

	"github.com/tallyledger/tally/domain/state"
)

// The applied layers of the state database (stateFormat 3) are packed into pages
// (docs/encoding.md, "Layer pages"): one row of layer_pages holds an owner's layers whose raw
// 32-byte identities lie from the row's first up to the next row's first, sorted, each with its
// record; one row of layer_depth_pages holds an owner's (depth, identity) keys in the same way,
// which answers "the layers at depth d". A lookup is one probe of the primary key (the last
// page whose first is at most the key) and a binary search in the page. A checkpoint merges
// its new layers into the pages they fall in and splits a page that grew past twice
// its target size; a replay writes the pages in key order. Layers whose identity is not 64
// lowercase hex digits (legacy text identities) are a row each in text_layers.

// A page holds its table's target number of entries when written in bulk (32 layers of about
// 80 bytes, 64 depth keys of 40), and never more than pageMaxBytes: SQLite keeps a row of up
// to about 4 KiB in its b-tree cell on a 16 KiB database page and puts the rest of a longer one
// in overflow pages of 16 KiB each, which a file of pages just past that limit would mostly
// waste. A checkpoint splits a page that grew past twice its target or past pageMaxBytes.
const (
	layerPageTarget = 32
	depthPageTarget = 64
	pageMaxBytes    = 3800
)

// A page: uvarint n; n keys of keyLen bytes, sorted; and for a table whose keys carry a value,
// n+1 little-endian uint32 offsets into the values that follow (value i is [off[i], off[i+1])).
type page struct {
	n      int
	keyLen int
	keys   []byte
	offs   []byte // nil for a page without values
	vals   []byte
}

// pageTable is one table of pages: its name and the shape of its keys.
type pageTable struct {
	name   string
	keyLen int
	valued bool
	target int // entries per page written in bulk
}

var (
	layerPages = pageTable{name: "layer_pages", keyLen: 32, valued: true, target: layerPageTarget}
	depthPages = pageTable{name: "layer_depth_pages", keyLen: depthKeyLen, target: depthPageTarget}
)

const depthKeyLen = 8 + 32

// depthKey is the key of a layer in layer_depth_pages: its depth (ordered as a signed number)
// then its identity.
func depthKey(depth int64, id []byte) []byte {
	k := make([]byte, depthKeyLen)
	binary.BigEndian.PutUint64(k, uint64(depth)^(1<<63))
	copy(k[8:], id)
	return k
}

func (t pageTable) parse(b []byte) (page, error) {
	n, used := binary.Uvarint(b)
	if used <= 0 || n > uint64(len(b))/uint64(t.keyLen) {
		return page{}, fmt.Errorf("state database: %s: a malformed page", t.name)
	}
	p := page{n: int(n), keyLen: t.keyLen}
	b = b[used:]
	p.keys, b = b[:p.n*t.keyLen], b[p.n*t.keyLen:]
	if !t.valued {
		if len(b) != 0 {
			return page{}, fmt.Errorf("state database: %s: a malformed page", t.name)
		}
		return p, nil
	}
	if len(b) < 4*(p.n+1) {
		return page{}, fmt.Errorf("state database: %s: a malformed page", t.name)
	}
	p.offs, p.vals = b[:4*(p.n+1)], b[4*(p.n+1):]
	last := uint32(0)
	for i := 0; i <= p.n; i++ {
		o := binary.LittleEndian.Uint32(p.offs[4*i:])
		if o < last || int(o) > len(p.vals) {
			return page{}, fmt.Errorf("state database: %s: a malformed page", t.name)
		}
		last = o
	}
	return p, nil
}

// size is the encoded size of a page of n entries whose values take vals bytes.
func (t pageTable) size(n, vals int) int {
	size := binary.MaxVarintLen64 + n*t.keyLen
	if t.valued {
		size += 4*(n+1) + vals
	}
	return size
}

func (p page) key(i int) []byte { return p.keys[i*p.keyLen : (i+1)*p.keyLen] }

func (p page) val(i int) []byte {
	if p.offs == nil {
		return nil
	}
	return p.vals[binary.LittleEndian.Uint32(p.offs[4*i:]):binary.LittleEndian.Uint32(p.offs[4*i+4:])]
}

// search returns the index of the first key at least k, and whether it equals k.
func (p page) search(k []byte) (int, bool) {
	i := sort.Search(p.n, func(i int) bool { return bytes.Compare(p.key(i), k) >= 0 })
	return i, i < p.n && bytes.Equal(p.key(i), k)
}

// pageEntry is one key of a page and its value.
type pageEntry struct {
	key, val []byte
}

// encode writes entries (sorted by key, keys unique) as a page.
func (t pageTable) encode(dst []byte, entries []pageEntry) []byte {
	return t.appendPage(dst[:0], entries)
}

// appendPage appends the page of entries to dst.
func (t pageTable) appendPage(dst []byte, entries []pageEntry) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(entries)))
	for _, e := range entries {
		dst = append(dst, e.key...)
	}
	if !t.valued {
		return dst
	}
	off := uint32(0)
	for _, e := range entries {
		dst = binary.LittleEndian.AppendUint32(dst, off)
		off += uint32(len(e.val))
	}
	dst = binary.LittleEndian.AppendUint32(dst, off)
	for _, e := range entries {
		dst = append(dst, e.val...)
	}
	return dst
}

func (p page) entries() []pageEntry {
	out := make([]pageEntry, p.n)
	for i := range out {
		out[i] = pageEntry{key: p.key(i), val: p.val(i)}
	}
	return out
}

// The record of a layer (a page's value, text_layers.record): a flags byte, the depth,
// timestamp and length as varints, then the fields the flags name, in this order.
const (
	recDigestRaw      = 1 << iota // 32 bytes
	recDigestText                 // uvarint length, bytes
	recFileDigestRaw              // 32 bytes
	recFileDigestText             // uvarint length, bytes
	recSkipped                    // uvarint length, bytes
)

func appendRecord(dst []byte, info state.LayerInfo) []byte {
	l := state.RawLayer{Depth: info.Depth, Timestamp: info.Timestamp, Length: info.Length, Skipped: info.Skipped}
	if l.Digest, l.DigestRaw = state.ParseHash(info.Digest); !l.DigestRaw {
		l.DigestText = info.Digest
	}
	if l.FileDigest, l.FileDigestRaw = state.ParseHash(info.FileDigest); !l.FileDigestRaw {
		l.FileDigestText = info.FileDigest
	}
	return appendRawRecord(dst, &l)
}

// appendRawRecord writes the record of a layer in the layer set's raw form (a replay's
// writer has them so): the same bytes as appendRecord(dst, l.Info()), without formatting and
// parsing its digests as hex.
func appendRawRecord(dst []byte, l *state.RawLayer) []byte {
	var flags byte
	switch {
	case l.DigestRaw:
		flags |= recDigestRaw
	case l.DigestText != "":
		flags |= recDigestText
	}
	switch {
	case l.FileDigestRaw:
		flags |= recFileDigestRaw
	case l.FileDigestText != "":
		flags |= recFileDigestText
	}
	if l.Skipped != "" {
		flags |= recSkipped
	}
	dst = append(dst, flags)
	dst = binary.AppendVarint(dst, l.Depth)
	dst = binary.AppendVarint(dst, l.Timestamp)
	dst = binary.AppendVarint(dst, l.Length)
	appendText := func(s string) {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	switch {
	case l.DigestRaw:
		dst = append(dst, l.Digest[:]...)
	case l.DigestText != "":
		appendText(l.DigestText)
	}
	switch {
	case l.FileDigestRaw:
		dst = append(dst, l.FileDigest[:]...)
	case l.FileDigestText != "":
		appendText(l.FileDigestText)
	}
	if l.Skipped != "" {
		appendText(l.Skipped)
	}
	return dst
}

var errBadRecord = errors.New("state database: a malformed layer record")

// recordDepth reads only the depth of a record.
func recordDepth(b []byte) (int64, error) {
	if len(b) < 2 {
		return 0, errBadRecord
	}
	d, n := binary.Varint(b[1:])
	if n <= 0 {
		return 0, errBadRecord
	}
	return d, nil
}

func decodeRecord(b []byte) (state.LayerInfo, error) {
	var info state.LayerInfo
	if len(b) < 1 {
		return info, errBadRecord
	}
	flags := b[0]
	b = b[1:]
	for _, v := range []*int64{&info.Depth, &info.Timestamp, &info.Length} {
		x, n := binary.Varint(b)
		if n <= 0 {
			return info, errBadRecord
		}
		*v, b = x, b[n:]
	}
	raw := func() (string, bool) {
		if len(b) < 32 {
			return "", false
		}
		s := hex.EncodeToString(b[:32])
		b = b[32:]
		return s, true
	}
	text := func() (string, bool) {
		l, n := binary.Uvarint(b)
		if n <= 0 || l > uint64(len(b)-n) {
			return "", false
		}
		s := string(b[n : n+int(l)])
		b = b[n+int(l):]
		return s, true
	}
	ok := true
	switch {
	case flags&recDigestRaw != 0:
		info.Digest, ok = raw()
	case flags&recDigestText != 0:
		info.Digest, ok = text()
	}
	if ok {
		switch {
		case flags&recFileDigestRaw != 0:
			info.FileDigest, ok = raw()
		case flags&recFileDigestText != 0:
			info.FileDigest, ok = text()
		}
	}
	if ok && flags&recSkipped != 0 {
		info.Skipped, ok = text()
	}
	if !ok || len(b) != 0 {
		return info, errBadRecord
	}
	return info, nil
}

// querier is what the page reads run on: the database, a transaction or a connection.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// findPage returns the page of owner that holds key if the table has it (the last page whose
// first is at most key), and that page's first.
func (t pageTable) findPage(ctx context.Context, q querier, owner string, key []byte) (page, []byte, bool, error) {
	var first, b []byte
	err := q.QueryRowContext(ctx, `SELECT first, entries FROM `+t.name+` WHERE owner = ? AND first <= ? ORDER BY first DESC LIMIT 1`, owner, key).Scan(&first, &b)
	if errors.Is(err, sql.ErrNoRows) {
		return page{}, nil, false, nil
	}
	if err != nil {
		return page{}, nil, false, fmt.Errorf("state database: %s: %w", t.name, err)
	}
	p, err := t.parse(b)
	return p, first, err == nil, err
}

// lookup returns the value of key in owner's pages.
func (t pageTable) lookup(ctx context.Context, q querier, owner string, key []byte) ([]byte, bool, error) {
	p, _, ok, err := t.findPage(ctx, q, owner, key)
	if !ok || err != nil {
		return nil, false, err
	}
	i, ok := p.search(key)
	if !ok {
		return nil, false, nil
	}
	return p.val(i), true, nil
}

// eachPage calls fn with each page of owner that may hold keys in [from, to] (every page when
// from is nil), in key order, until fn returns false.
func (t pageTable) eachPage(ctx context.Context, q querier, owner string, from, to []byte, fn func(page) bool) error {
	var rows *sql.Rows
	var err error
	if from == nil {
		rows, err = q.QueryContext(ctx, `SELECT entries FROM `+t.name+` WHERE owner = ? ORDER BY first`, owner)
	} else {
		rows, err = q.QueryContext(ctx, `SELECT entries FROM `+t.name+` WHERE owner = ?1 AND first <= ?3 AND first >= coalesce((SELECT max(first) FROM `+t.name+` WHERE owner = ?1 AND first <= ?2), x'') ORDER BY first`, owner, from, to)
	}
	if err != nil {
		return fmt.Errorf("state database: %s: %w", t.name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			return fmt.Errorf("state database: %s: %w", t.name, err)
		}
		p, err := t.parse(b)
		if err != nil {
			return err
		}
		if !fn(p) {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("state database: %s: %w", t.name, err)
	}
	return nil
}

// txStmts runs the page writes of one transaction with statements prepared once for it: a
// checkpoint touches many pages with the same few statements.
type txStmts struct {
	tx *sql.Tx
	m  map[string]*sql.Stmt
}

func newTxStmts(tx *sql.Tx) *txStmts { return &txStmts{tx: tx, m: map[string]*sql.Stmt{}} }

func (s *txStmts) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.m[query]; ok {
		return st, nil
	}
	st, err := s.tx.PrepareContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("state database: %w", err)
	}
	s.m[query] = st
	return st, nil
}

func (s *txStmts) close() error {
	var errs []error
	for _, st := range s.m {
		errs = append(errs, st.Close())
	}
	return errors.Join(errs...)
}

// merge puts adds (sorted by key, keys unique) into owner's pages and takes removes (sorted)
// out of them, rewriting only the pages they fall in; a page past twice its target is split.
// replaced, if not nil, is called with the old value of each key that adds replace. Each page
// touched costs one query (the page and its successor's first) and one write.
func (t pageTable) merge(ctx context.Context, s *txStmts, owner string, adds []pageEntry, removes [][]byte, replaced func(key, old []byte)) error {
	find, err := s.prepared(ctx, `SELECT first, entries FROM `+t.name+` WHERE owner = ?1 AND first >= coalesce((SELECT max(first) FROM `+t.name+` WHERE owner = ?1 AND first <= ?2), x'') ORDER BY first LIMIT 2`)
	if err != nil {
		return err
	}
	var buf []byte
	for len(adds) > 0 || len(removes) > 0 {
		var k []byte
		switch {
		case len(removes) == 0 || (len(adds) > 0 && bytes.Compare(adds[0].key, removes[0]) < 0):
			k = adds[0].key
		default:
			k = removes[0]
		}
		// The page that holds k (or the owner's first page, for a key before it), and the
		// first of the page after it: the keys below that go into this page.
		var first, next []byte
		var p page
		rows, err := find.QueryContext(ctx, owner, k)
		if err != nil {
			return fmt.Errorf("state database: %s: %w", t.name, err)
		}
		for n := 0; rows.Next(); n++ {
			var f, b []byte
			if err := rows.Scan(&f, &b); err != nil {
				_ = rows.Close()
				return fmt.Errorf("state database: %s: %w", t.name, err)
			}
			if n == 0 {
				first = f
				if p, err = t.parse(b); err != nil {
					_ = rows.Close()
					return err
				}
			} else {
				next = f
			}
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return fmt.Errorf("state database: %s: %w", t.name, err)
		}
		below := func(key []byte) bool { return next == nil || bytes.Compare(key, next) < 0 }
		na := sort.Search(len(adds), func(i int) bool { return !below(adds[i].key) })
		nr := sort.Search(len(removes), func(i int) bool { return !below(removes[i]) })
		merged := mergeEntries(p.entries(), adds[:na], removes[:nr], replaced)
		adds, removes = adds[na:], removes[nr:]
		parts := 1
		vals := 0
		for _, e := range merged {
			vals += len(e.val)
		}
		if size := t.size(len(merged), vals); len(merged) > 2*t.target || size > pageMaxBytes {
			parts = max(2, (len(merged)+t.target-1)/t.target, (size+pageMaxBytes*3/4-1)/(pageMaxBytes*3/4))
			parts = min(parts, len(merged))
		}
		if first != nil && parts == 1 && len(merged) > 0 && bytes.Equal(merged[0].key, first) {
			update, err := s.prepared(ctx, `UPDATE `+t.name+` SET entries = ? WHERE owner = ? AND first = ?`)
			if err != nil {
				return err
			}
			buf = t.encode(buf, merged)
			if _, err := update.ExecContext(ctx, buf, owner, first); err != nil {
				return fmt.Errorf("state database: %s: %w", t.name, err)
			}
			continue
		}
		if first != nil {
			del, err := s.prepared(ctx, `DELETE FROM `+t.name+` WHERE owner = ? AND first = ?`)
			if err != nil {
				return err
			}
			if _, err := del.ExecContext(ctx, owner, first); err != nil {
				return fmt.Errorf("state database: %s: %w", t.name, err)
			}
		}
		insert, err := s.prepared(ctx, `INSERT INTO `+t.name+` (owner, first, entries) VALUES (?, ?, ?)`)
		if err != nil {
			return err
		}
		for i := range parts {
			part := merged[i*len(merged)/parts : (i+1)*len(merged)/parts]
			if len(part) == 0 {
				continue
			}
			buf = t.encode(buf, part)
			if _, err := insert.ExecContext(ctx, owner, part[0].key, buf); err != nil {
				return fmt.Errorf("state database: %s: %w", t.name, err)
			}
		}
	}
	return nil
}

// mergeEntries merges sorted old entries with adds (which replace an equal key) less removes.
func mergeEntries(old, adds []pageEntry, removes [][]byte, replaced func(key, old []byte)) []pageEntry {
	out := make([]pageEntry, 0, len(old)+len(adds))
	i, j, r := 0, 0, 0
	for i < len(old) || j < len(adds) {
		var e pageEntry
		switch {
		case j == len(adds) || (i < len(old) && bytes.Compare(old[i].key, adds[j].key) < 0):
			e = old[i]
			i++
		case i < len(old) && bytes.Equal(old[i].key, adds[j].key):
			if replaced != nil {
				replaced(old[i].key, old[i].val)
			}
			e = adds[j]
			i++
			j++
		default:
			e = adds[j]
			j++
		}
		for r < len(removes) && bytes.Compare(removes[r], e.key) < 0 {
			r++
		}
		if r < len(removes) && bytes.Equal(removes[r], e.key) {
			continue
		}
		out = append(out, e)
	}
	return out
}

// pageWriter writes pages of one table in key order (a replay, SaveState): the entries of
// each owner are handed over sorted, owners in order. The rows go to an inserter.
type pageWriter struct {
	t       pageTable
	stmt    *sql.Stmt
	ins     *rowInserter
	owner   string
	entries []pageEntry
	vals    int // the entries' values' bytes
}

func newPageWriter(ctx context.Context, x interface {
	PrepareContext(context.Context, string) (*sql.Stmt, error)
}, t pageTable, ins *rowInserter) (*pageWriter, error) {
	stmt, err := x.PrepareContext(ctx, `INSERT INTO `+t.name+` (owner, first, entries) VALUES (?, ?, ?)`)
	if err != nil {
		return nil, fmt.Errorf("state database: %s: %w", t.name, err)
	}
	return &pageWriter{t: t, stmt: stmt, ins: ins}, nil
}

// add appends one entry; its key and value are copied when the page is written, so the
// caller keeps them unchanged until then (flush).
func (w *pageWriter) add(owner string, e pageEntry) {
	if owner != w.owner || len(w.entries) == w.t.target || w.t.size(len(w.entries)+1, w.vals+len(e.val)) > pageMaxBytes {
		w.flush()
		w.owner = owner
	}
	w.entries = append(w.entries, e)
	w.vals += len(e.val)
}

// flush hands the page being filled to the inserter.
func (w *pageWriter) flush() {
	if len(w.entries) == 0 {
		return
	}
	w.ins.insert(pageRow{stmt: w.stmt, owner: w.owner, first: bytes.Clone(w.entries[0].key), entries: w.t.encode(w.ins.buffer(), w.entries)})
	clear(w.entries)
	w.entries, w.vals = w.entries[:0], 0
}

// pageRow is a page to insert.
type pageRow struct {
	stmt           *sql.Stmt
	owner          string
	first, entries []byte
}

// rowInserter runs a bulk write's page inserts on a goroutine of its own, so that merging and
// packing the next pages takes the other core; the first error is reported by close.
type rowInserter struct {
	rows chan pageRow
	free chan []byte // page buffers to reuse
	done chan error
}

func newRowInserter(ctx context.Context) *rowInserter {
	ins := &rowInserter{rows: make(chan pageRow, 64), free: make(chan []byte, 80), done: make(chan error, 1)}
	// The inserts run without ctx's cancellation, its error checked before each instead: the
	// driver watches a cancellable context on a goroutine of its own per statement, which cost
	// a replay's 183,737 inserts about 0.2 s of CPU, and one insert is a few microseconds.
	uncancelled := context.WithoutCancel(ctx)
	go func() {
		var err error
		for r := range ins.rows {
			if err == nil && ctx.Err() != nil {
				err = fmt.Errorf("state database: layer pages: %w", ctx.Err())
			}
			if err == nil {
				if _, xerr := r.stmt.ExecContext(uncancelled, r.owner, r.first, r.entries); xerr != nil {
					err = fmt.Errorf("state database: layer pages: %w", xerr)
				}
			}
			select {
			case ins.free <- r.entries[:0]:
			default:
			}
		}
		ins.done <- err
	}()
	return ins
}

func (ins *rowInserter) buffer() []byte {
	select {
	case b := <-ins.free:
		return b
	default:
		return nil
	}
}

func (ins *rowInserter) insert(r pageRow) { ins.rows <- r }

// close waits for the inserts handed over and returns the first error.
func (ins *rowInserter) close() error {
	close(ins.rows)
	return <-ins.done
}
