package readmodel

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/projections"
)

// ErrNotAligned is returned for a report whose range or periods do not start and end on
// 15-minute boundaries (an RFC 3339 bound like 10:07, or a zone's offset before 1970 such as
// local mean time): the buckets cannot answer it exactly, so the caller replays the store.
var ErrNotAligned = errors.New("read model: the report's bounds are not on 15-minute boundaries")

// SourceReadModel names reports answered by this package in UsageReport.Source.
const SourceReadModel = "readmodel"

// Usage answers a usage report from the buckets, with the numbers projections.Usage computes
// by replaying the store, as of the model's committed checkpoint (the report's Position).
func (m *Model) Usage(ctx context.Context, q projections.UsageQuery) (*projections.UsageReport, error) {
	q, err := projections.NormalizeUsageQuery(q)
	if err != nil {
		return nil, err
	}
	periods, err := projections.Periods(q)
	if err != nil {
		return nil, err
	}
	if !aligned(q.From) || !aligned(q.To) {
		return nil, ErrNotAligned
	}
	bounds := make([]int64, len(periods)) // each period's changes have bounds[i] <= t < bounds[i+1] (or To)
	for i, p := range periods {
		if i > 0 && !aligned(p.Start) {
			return nil, ErrNotAligned
		}
		bounds[i] = p.Start.Unix()
	}
	from, to := q.From.Unix(), q.To.Unix()
	axis := axisUsage
	if q.Axis == projections.AxisRecorded {
		axis = axisRecorded
	}

	tx, err := m.readDB.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	rep := &projections.UsageReport{From: q.From, To: q.To, TimeZone: q.Location.String(), By: q.By, Axis: q.Axis, Source: SourceReadModel, Rows: []projections.UsageRow{}}
	if err := tx.QueryRowContext(ctx, `SELECT position FROM meta WHERE id = 1`).Scan(&rep.Position); err != nil {
		return nil, fmt.Errorf("read model checkpoint: %w", err)
	}
	objs, all := m.selectObjects(q.Include)
	if len(objs) == 0 {
		return rep, nil
	}
	byID := make(map[int64]*reportObject, len(objs))
	for _, o := range objs {
		byID[o.info.ObjectID] = o
	}
	filter := ""
	if !all {
		var sb strings.Builder
		sb.WriteString(" AND object_id IN (")
		for i, o := range objs {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(strconv.FormatInt(o.info.ObjectID, 10))
		}
		sb.WriteByte(')')
		filter = sb.String()
	}
	// The objects' values in this snapshot; an object the snapshot does not hold yet (added
	// after its checkpoint) has no value and no buckets, and no rows.
	vrows, err := tx.QueryContext(ctx, `SELECT object_id, value FROM objects WHERE 1`+filter)
	if err != nil {
		return nil, fmt.Errorf("read model objects: %w", err)
	}
	for vrows.Next() {
		var id, value int64
		if err := vrows.Scan(&id, &value); err != nil {
			vrows.Close()
			return nil, fmt.Errorf("read model objects: %w", err)
		}
		if o := byID[id]; o != nil {
			o.value, o.committed = value, true
		}
	}
	vrows.Close()
	if err := vrows.Err(); err != nil {
		return nil, fmt.Errorf("read model objects: %w", err)
	}

	// The periods, each as whole buckets, coarsest where they fit.
	var ranges []bucketRange
	for i := range periods {
		e := to
		if i+1 < len(periods) {
			e = bounds[i+1]
		}
		ranges = decompose(ranges, max(bounds[i], from), e)
	}
	for l := levelQuarter; l < levels; l++ {
		rs := mergeRanges(ranges, l)
		reads := rs
		if len(rs) > 4 {
			// Many short runs (a day's edges in a zone off the UTC hour, day after day): one
			// read of their whole span costs less than a query each; buckets between runs
			// belong to coarser pieces and are skipped.
			reads = []bucketRange{{level: l, lo: rs[0].lo, hi: rs[len(rs)-1].hi}}
		}
		for _, r := range reads {
			err := scan(ctx, tx, r, axis, all, filter, func(id, t int64, s sums) {
				o := byID[id]
				if o == nil {
					return
				}
				if len(reads) != len(rs) {
					i := sort.Search(len(rs), func(i int) bool { return rs[i].hi > t })
					if i == len(rs) || rs[i].lo > t {
						return
					}
				}
				i := 0
				if len(bounds) > 1 {
					start := l.start(t)
					i = max(sort.Search(len(bounds), func(i int) bool { return bounds[i] > start })-1, 0)
				}
				o.add(i, len(periods), s)
			})
			if err != nil {
				return nil, err
			}
		}
	}
	// The changes from To on, which with the periods' own make the changes from From on: the
	// value before From is the object's value minus them.
	for _, r := range suffix(to) {
		err := scanNet(ctx, tx, r, axis, all, filter, func(id, net int64) {
			if o := byID[id]; o != nil {
				o.later += net
			}
		})
		if err != nil {
			return nil, err
		}
	}
	rows := 0
	for _, o := range objs {
		if o.committed {
			rows += o.rows()
		}
	}
	rep.Rows = make([]projections.UsageRow, 0, rows)
	for _, o := range objs {
		if !o.committed || o.rows() == 0 {
			continue
		}
		after := o.later // the changes from From on
		o.each(func(_ int, s *sums) { after += s.inc - s.dec + s.corr + s.adj })
		value := o.value - after
		o.each(func(i int, s *sums) {
			if s.n == 0 {
				return
			}
			p := periods[i]
			r := projections.UsageRow{
				UsageObject: o.info, Period: p.Name, Start: p.Start, End: p.End,
				Increments: s.inc, Decrements: s.dec, Corrections: s.corr, Entries: int(s.entries), Sets: int(s.sets), Adjustments: s.adj,
			}
			r.Net = r.Increments - r.Decrements + r.Corrections
			r.Opening = value
			r.Closing = r.Opening + r.Net + r.Adjustments
			value = r.Closing
			rep.Rows = append(rep.Rows, r)
		})
	}
	return rep, nil
}

// reportObject is one object of a report being built.
type reportObject struct {
	info      projections.UsageObject
	committed bool  // the snapshot holds the object
	value     int64 // the sum of all its changes
	later     int64 // the sum of its changes at or after To
	// The sums of its buckets by period index: dense (one per period) for reports of few
	// periods, where most objects have most periods, else only the periods it has.
	dense  []sums
	sparse map[int]*sums
}

// densePeriods is the most periods a report keeps dense sums for: a month by day or a year by
// month is dense; a year by hour, where an object has a few of 8,760 hours, is not.
const densePeriods = 64

// add adds a bucket's sums to period i of a report of n periods.
func (o *reportObject) add(i, n int, s sums) {
	if n <= densePeriods {
		if o.dense == nil {
			o.dense = make([]sums, n)
		}
		o.dense[i].add(s)
		return
	}
	if o.sparse == nil {
		o.sparse = map[int]*sums{}
	}
	acc := o.sparse[i]
	if acc == nil {
		acc = &sums{}
		o.sparse[i] = acc
	}
	acc.add(s)
}

// rows is how many periods have a bucket of the object (at most its rows in the report).
func (o *reportObject) rows() int {
	if o.dense == nil {
		return len(o.sparse)
	}
	n := 0
	for i := range o.dense {
		if o.dense[i] != (sums{}) {
			n++
		}
	}
	return n
}

// each calls fn for the periods that have buckets of the object, in period order.
func (o *reportObject) each(fn func(i int, s *sums)) {
	if o.dense != nil {
		for i := range o.dense {
			if o.dense[i] != (sums{}) {
				fn(i, &o.dense[i])
			}
		}
		return
	}
	idx := make([]int, 0, len(o.sparse))
	for i := range o.sparse {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	for _, i := range idx {
		fn(i, o.sparse[i])
	}
}

// selectObjects returns the objects the report covers, in the report's order (product, key,
// object); all says whether that is every object.
func (m *Model) selectObjects(include func(projections.UsageObject) bool) ([]*reportObject, bool) {
	m.infoMu.RLock()
	out := make([]*reportObject, 0, len(m.infos))
	for _, info := range m.infos {
		if include == nil || include(info) {
			out = append(out, &reportObject{info: info})
		}
	}
	all := len(out) == len(m.infos)
	m.infoMu.RUnlock()
	slices.SortFunc(out, func(a, b *reportObject) int {
		return cmp.Or(cmp.Compare(a.info.ProductID, b.info.ProductID), cmp.Compare(a.info.KeyID, b.info.KeyID), cmp.Compare(a.info.ObjectID, b.info.ObjectID))
	})
	return out, all
}

// mergeRanges returns the ranges of level l, adjacent ones joined.
func mergeRanges(rs []bucketRange, l level) []bucketRange {
	var out []bucketRange
	for _, r := range rs {
		if r.level != l {
			continue
		}
		if n := len(out); n > 0 && out[n-1].hi == r.lo {
			out[n-1].hi = r.hi
			continue
		}
		out = append(out, r)
	}
	return out
}

// scan calls fn for each bucket of range r on axis, for the objects of filter (every object
// when all).
func scan(ctx context.Context, tx *sql.Tx, r bucketRange, axis int, all bool, filter string, fn func(id, t int64, s sums)) error {
	rows, err := tx.QueryContext(ctx, bucketQuery("b.object_id, b.t, b.inc, b.dec, b.corr, b.entries, b.sets, b.adj, b.n", r.level, all, filter), axis, r.lo, r.hi)
	if err != nil {
		return fmt.Errorf("read model %s: %w", levelTables[r.level], err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, t int64
		var s sums
		if err := rows.Scan(&id, &t, &s.inc, &s.dec, &s.corr, &s.entries, &s.sets, &s.adj, &s.n); err != nil {
			return fmt.Errorf("read model %s: %w", levelTables[r.level], err)
		}
		fn(id, t, s)
	}
	return rows.Err()
}

// scanNet calls fn with the net change (increments − decrements + corrections + adjustments)
// of each bucket of range r on axis, for the objects of filter (every object when all): what
// the value before a report's start needs, in two columns instead of nine.
func scanNet(ctx context.Context, tx *sql.Tx, r bucketRange, axis int, all bool, filter string, fn func(id, net int64)) error {
	rows, err := tx.QueryContext(ctx, bucketQuery("b.object_id, b.inc - b.dec + b.corr + b.adj", r.level, all, filter), axis, r.lo, r.hi)
	if err != nil {
		return fmt.Errorf("read model %s: %w", levelTables[r.level], err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, net int64
		if err := rows.Scan(&id, &net); err != nil {
			return fmt.Errorf("read model %s: %w", levelTables[r.level], err)
		}
		fn(id, net)
	}
	return rows.Err()
}

// bucketQuery is the query of columns cols (of the bucket table as b) of the buckets of level l
// with axis = ?1 and ?2 <= t < ?3, for the objects of filter (every object when all).
func bucketQuery(cols string, l level, all bool, filter string) string {
	table := levelTables[l]
	switch {
	case all && l >= levelDay:
		// Every object, a time range: the time index, not a scan of every object's buckets.
		return `SELECT ` + cols + ` FROM ` + table + ` AS b INDEXED BY ` + table + `_by_time WHERE b.axis = ?1 AND b.t >= ?2 AND b.t < ?3`
	case all:
		// The fine levels have no time index (it would cost every fold a second index write):
		// one seek of the primary key per object (CROSS JOIN keeps the objects outside), not a
		// scan of every bucket of every object, which for the quarters is most of the file.
		return `SELECT ` + cols + ` FROM objects AS o CROSS JOIN ` + table + ` AS b WHERE b.axis = ?1 AND b.object_id = o.object_id AND b.t >= ?2 AND b.t < ?3`
	}
	return `SELECT ` + cols + ` FROM ` + table + ` AS b WHERE b.axis = ?1 AND b.t >= ?2 AND b.t < ?3` + filter
}

// ValueAt answers a data object's value as of at with one probe of the value-as-of index: the
// value after the last change recorded at or before at, as projections.ValueAt computes by
// folding the object's stream. AsOf is the model's checkpoint.
func (m *Model) ValueAt(ctx context.Context, objectID int64, at time.Time) (*projections.ValueAsOf, error) {
	tx, err := m.readDB.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("read model: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	v := &projections.ValueAsOf{ObjectID: objectID, At: at}
	if err := tx.QueryRowContext(ctx, `SELECT position FROM meta WHERE id = 1`).Scan(&v.AsOf); err != nil {
		return nil, fmt.Errorf("read model checkpoint: %w", err)
	}
	var one int
	err = tx.QueryRowContext(ctx, `SELECT 1 FROM objects WHERE object_id = ?`, objectID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("data object %d: %w", objectID, projections.ErrNoSuchObject)
	}
	if err != nil {
		return nil, fmt.Errorf("read model objects: %w", err)
	}
	var intValue int64
	var revision int64
	err = tx.QueryRowContext(ctx, `SELECT int_value, string_value, removed, revision FROM value_at
		WHERE object_id = ? AND recorded <= ? ORDER BY recorded DESC, position DESC LIMIT 1`, objectID, unixNanoClamped(at)).
		Scan(&intValue, &v.StringValue, &v.Removed, &revision)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return v, nil
	case err != nil:
		return nil, fmt.Errorf("read model value index: %w", err)
	}
	v.Exists, v.IntValue, v.Revision = true, int32(intValue), uint64(revision)
	return v, nil
}

// unixNanoClamped is t in Unix nanoseconds, clamped to what int64 holds (years 1678 to 2262).
func unixNanoClamped(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

// Head is the store's last position.
func (m *Model) Head(ctx context.Context) (eventstore.Position, error) {
	return eventstore.Head(ctx, m.store, m.Position())
}

// Wait is WaitFor on the store's head as it is now: what a caller that wants to read its own
// writes asks for. It returns the position waited for.
func (m *Model) Wait(ctx context.Context) (eventstore.Position, error) {
	head, err := m.Head(ctx)
	if err != nil {
		return 0, err
	}
	return head, m.WaitFor(ctx, head)
}

// Events is how many events the committed read model has folded: with exactly-once folding,
// the number of events in the store up to its checkpoint.
func (m *Model) Events(ctx context.Context) (int64, error) {
	var n int64
	if err := m.readDB.QueryRowContext(ctx, `SELECT events FROM meta WHERE id = 1`).Scan(&n); err != nil {
		return 0, fmt.Errorf("read model checkpoint: %w", err)
	}
	return n, nil
}
