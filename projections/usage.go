package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
)

// AllReader reads every stream in global order; eventstore.Store is one.
type AllReader interface {
	ReadAll(ctx context.Context, from eventstore.Position, max int) ([]eventstore.RecordedEvent, error)
}

// TimeAxis says which time a change counts at in a usage report.
type TimeAxis string

const (
	// AxisUsage counts a change when the usage happened: the event's At for direct calls,
	// corrections and sets, the layer's log timestamp for upload entries.
	AxisUsage TimeAxis = "usage"
	// AxisRecorded counts a change when it started to count in the ledger: the store's Recorded
	// time of the event, or of its UploadCommitted for upload entries.
	AxisRecorded TimeAxis = "recorded"
)

// Granularity is the length of a usage report's periods.
type Granularity string

const (
	ByHour  Granularity = "hour"
	ByDay   Granularity = "day"
	ByMonth Granularity = "month"
)

// UsageObject identifies a data object in a usage report.
type UsageObject struct {
	ObjectID int64        `json:"objectId"`
	Name     string       `json:"name"`
	Owner    domain.Owner `json:"owner"`
	// ProductID is the product the object belongs to, directly or through its key (0 for the
	// account's own objects); KeyID and Key are set for objects of a license key.
	ProductID int64  `json:"productId,omitempty"`
	KeyID     int64  `json:"keyId,omitempty"`
	Key       string `json:"key,omitempty"`
}

// UsageQuery says what a usage report covers.
type UsageQuery struct {
	// From and To bound the report: a change counts if its time t has From <= t < To.
	From, To time.Time
	// Location is the time zone of the periods (default UTC).
	Location *time.Location
	By       Granularity // default ByDay
	Axis     TimeAxis    // default AxisUsage
	// Include selects the objects reported (nil: every object).
	Include func(UsageObject) bool
}

// UsageRow is one data object's usage in one period.
type UsageRow struct {
	UsageObject
	// Period names the period in the report's zone: 2025-03-30 or 2025-03.
	Period string `json:"period"`
	// Start and End bound the period within the report: [Start, End).
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Increments and Decrements sum the amounts of counted increments and decrements (both
	// positive), corrections excluded.
	Increments int64 `json:"increments"`
	Decrements int64 `json:"decrements"`
	// Corrections sums the signed amounts of operators' corrections.
	Corrections int64 `json:"corrections"`
	// Net is Increments - Decrements + Corrections.
	Net int64 `json:"net"`
	// Entries counts the increments, decrements and corrections.
	Entries int `json:"entries"`
	// Sets counts SetIntValue calls; Adjustments sums what they changed the value by (After
	// minus the value before), plus the initial value of an object added in the period. They
	// are not usage.
	Sets        int   `json:"sets"`
	Adjustments int64 `json:"adjustments"`
	// Opening is the value at Start by the report's time axis: the sum of every change and
	// adjustment whose time is before Start. Closing is Opening + Net + Adjustments.
	Opening int64 `json:"opening"`
	Closing int64 `json:"closing"`
}

// UsageReport is the result of Usage.
type UsageReport struct {
	From     time.Time   `json:"from"`
	To       time.Time   `json:"to"`
	TimeZone string      `json:"timeZone"`
	By       Granularity `json:"by"`
	Axis     TimeAxis    `json:"time"`
	// Position is the last event folded: the report reflects the store up to it.
	Position eventstore.Position `json:"position"`
	// Source says what answered: "readmodel" (the persisted buckets) or "replay" (a fold of
	// the whole store).
	Source string     `json:"source,omitempty"`
	Rows   []UsageRow `json:"rows"`
}

// change kinds of a usage fold
type changeKind uint8

const (
	changeIncrement changeKind = iota
	changeDecrement
	changeCorrection
	changeSet
	changeInitial
)

type pendingChange struct {
	objectID int64
	delta    int64
	logTime  time.Time
}

type usageObject struct {
	info  UsageObject
	value int64 // the current-state value, as the fold has it so far
	base  int64 // the sum of changes timed before From
	rows  map[int64]*UsageRow
}

type usageFold struct {
	q       UsageQuery
	objects map[int64]*usageObject
	keys    map[int64]domain.LicenseKey
	pending map[uuid.UUID][]pendingChange
	aborted map[uuid.UUID]bool
}

// Usage replays every event of the store in global order and reports, per data object and
// period, the usage that happened in [q.From, q.To). Changes of an upload count only if the
// upload was committed by the end of the store; aborted and still pending uploads count
// nothing. Rows exist for the periods in which an object had at least one change or set.
func Usage(ctx context.Context, r AllReader, q UsageQuery) (*UsageReport, error) {
	q, err := NormalizeUsageQuery(q)
	if err != nil {
		return nil, err
	}
	if _, err := Periods(q); err != nil {
		return nil, err
	}
	f := &usageFold{
		q: q, objects: map[int64]*usageObject{}, keys: map[int64]domain.LicenseKey{},
		pending: map[uuid.UUID][]pendingChange{}, aborted: map[uuid.UUID]bool{},
	}
	rep := &UsageReport{From: q.From, To: q.To, TimeZone: q.Location.String(), By: q.By, Axis: q.Axis, Source: SourceReplay}
	for {
		evs, err := r.ReadAll(ctx, rep.Position, 4096)
		if err != nil {
			return nil, fmt.Errorf("usage report: %w", err)
		}
		if len(evs) == 0 {
			break
		}
		for _, ev := range evs {
			if err := f.apply(ev); err != nil {
				return nil, fmt.Errorf("usage report: %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
		}
		rep.Position = evs[len(evs)-1].Position
	}
	rep.Rows = f.rows()
	return rep, nil
}

func (f *usageFold) apply(ev eventstore.RecordedEvent) error {
	switch ev.Type {
	case domain.EventKeyCreated:
		var d domain.KeyCreated
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return err
		}
		f.keys[d.KeyID] = domain.LicenseKey{ID: d.KeyID, ProductID: d.ProductID, Key: d.Key}
	case domain.EventDataObjectAdded:
		var d domain.DataObjectAdded
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return err
		}
		info := UsageObject{ObjectID: d.ObjectID, Name: d.Name, Owner: d.Owner}
		switch d.Owner.Type {
		case domain.OwnerProduct:
			info.ProductID = d.Owner.ID
		case domain.OwnerKey:
			k := f.keys[d.Owner.ID]
			info.ProductID, info.KeyID, info.Key = k.ProductID, k.ID, k.Key
		}
		o := &usageObject{info: info, rows: map[int64]*UsageRow{}}
		f.objects[d.ObjectID] = o
		f.count(o, changeInitial, int64(d.IntValue), f.pick(d.At, ev.Recorded))
	case domain.EventIntValueSet:
		var d domain.IntValueSet
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return err
		}
		if o := f.objects[d.ObjectID]; o != nil {
			f.count(o, changeSet, int64(d.After)-o.value, f.pick(d.At, ev.Recorded))
		}
	case domain.EventIncrementApplied, domain.EventDecrementApplied:
		d, err := domain.DecodeValueChanged(ev.Data)
		if err != nil {
			return err
		}
		delta := int64(domain.DirectionOf(ev.Type)) * d.Amount
		if d.Upload != nil {
			if !f.aborted[d.Upload.UploadID] {
				f.pending[d.Upload.UploadID] = append(f.pending[d.Upload.UploadID], pendingChange{objectID: d.ObjectID, delta: delta, logTime: d.Upload.LogTimestamp})
			}
			return nil
		}
		o := f.objects[d.ObjectID]
		if o == nil {
			return nil
		}
		kind := changeIncrement
		switch {
		case d.Correction != "":
			kind = changeCorrection
		case delta < 0:
			kind = changeDecrement
		}
		f.count(o, kind, delta, f.pick(d.At, ev.Recorded))
	case domain.EventUploadCommitted, domain.EventUploadAborted:
		var d struct{ UploadID uuid.UUID }
		var err error
		if d.UploadID, _, err = domain.DecodeUploadDecision(ev.Type, ev.Data); err != nil {
			return err
		}
		changes := f.pending[d.UploadID]
		delete(f.pending, d.UploadID)
		if ev.Type == domain.EventUploadAborted {
			f.aborted[d.UploadID] = true
			return nil
		}
		for _, c := range changes {
			o := f.objects[c.objectID]
			if o == nil {
				continue
			}
			kind := changeIncrement
			if c.delta < 0 {
				kind = changeDecrement
			}
			f.count(o, kind, c.delta, f.pick(c.logTime, ev.Recorded))
		}
	}
	return nil
}

// SourceReplay names reports made by Usage in UsageReport.Source.
const SourceReplay = "replay"

// MaxPeriods bounds the periods of one usage report.
const MaxPeriods = 10000

// ErrTooManyPeriods is returned for a report of more than MaxPeriods periods.
var ErrTooManyPeriods = fmt.Errorf("usage report: more than %d periods", MaxPeriods)

// NormalizeUsageQuery fills in a query's defaults (UTC, by day, usage axis) and checks it.
func NormalizeUsageQuery(q UsageQuery) (UsageQuery, error) {
	if q.Location == nil {
		q.Location = time.UTC
	}
	if q.By == "" {
		q.By = ByDay
	}
	if q.Axis == "" {
		q.Axis = AxisUsage
	}
	if q.By != ByHour && q.By != ByDay && q.By != ByMonth {
		return q, fmt.Errorf("usage periods %q: want hour, day or month", q.By)
	}
	if q.Axis != AxisUsage && q.Axis != AxisRecorded {
		return q, fmt.Errorf("usage time axis %q: want usage or recorded", q.Axis)
	}
	if !q.From.Before(q.To) {
		return q, errors.New("usage report: from must be before to")
	}
	return q, nil
}

// Period is one period of a usage report.
type Period struct {
	// Name is as in UsageRow.Period; Start and End are as a row of it shows them (cut by the
	// report's range).
	Name       string
	Start, End time.Time
	// Next is the start of the next period (uncut): the changes of this period have
	// Start <= t < min(Next, To).
	Next time.Time
}

// Periods lists the periods of a normalized query in order, or ErrTooManyPeriods.
func Periods(q UsageQuery) ([]Period, error) {
	var out []Period
	for start := periodStart(q.From, q.Location, q.By); start.Before(q.To); {
		if len(out) == MaxPeriods {
			return nil, ErrTooManyPeriods
		}
		end := periodEnd(start, q.By)
		next := periodStart(end, q.Location, q.By)
		if !next.After(start) { // a zone whose midnight Date cannot resolve forwards
			next = end
		}
		p := Period{Name: periodName(start, q.By), Start: start, End: end, Next: next}
		if p.Start.Before(q.From) {
			p.Start = q.From.In(q.Location)
		}
		if p.End.After(q.To) {
			p.End = q.To.In(q.Location)
		}
		out = append(out, p)
		start = next
	}
	return out, nil
}

// pick returns the time a change counts at on the report's axis.
func (f *usageFold) pick(usage, recorded time.Time) time.Time {
	if f.q.Axis == AxisRecorded {
		return recorded
	}
	return usage
}

// count applies a change to the object's current value and, if the object is reported, adds
// it to the base (before From) or to its period's row.
func (f *usageFold) count(o *usageObject, kind changeKind, delta int64, at time.Time) {
	o.value += delta
	if f.q.Include != nil && !f.q.Include(o.info) {
		return
	}
	if at.Before(f.q.From) {
		o.base += delta
		return
	}
	if !at.Before(f.q.To) {
		return
	}
	start := periodStart(at, f.q.Location, f.q.By)
	row := o.rows[start.Unix()]
	if row == nil {
		row = &UsageRow{UsageObject: o.info, Period: periodName(start, f.q.By), Start: start, End: periodEnd(start, f.q.By)}
		if row.Start.Before(f.q.From) {
			row.Start = f.q.From.In(f.q.Location)
		}
		if row.End.After(f.q.To) {
			row.End = f.q.To.In(f.q.Location)
		}
		o.rows[start.Unix()] = row
	}
	switch kind {
	case changeIncrement:
		row.Increments += delta
		row.Entries++
	case changeDecrement:
		row.Decrements -= delta
		row.Entries++
	case changeCorrection:
		row.Corrections += delta
		row.Entries++
	case changeSet:
		row.Sets++
		row.Adjustments += delta
	case changeInitial:
		row.Adjustments += delta
	}
}

// rows orders the rows by product, key, object and period, and chains openings and closings.
func (f *usageFold) rows() []UsageRow {
	out := []UsageRow{}
	ids := make([]int64, 0, len(f.objects))
	for id := range f.objects {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := f.objects[ids[i]].info, f.objects[ids[j]].info
		if a.ProductID != b.ProductID {
			return a.ProductID < b.ProductID
		}
		if a.KeyID != b.KeyID {
			return a.KeyID < b.KeyID
		}
		return a.ObjectID < b.ObjectID
	})
	for _, id := range ids {
		o := f.objects[id]
		rows := make([]*UsageRow, 0, len(o.rows))
		for _, r := range o.rows {
			rows = append(rows, r)
		}
		sort.Slice(rows, func(i, j int) bool { return rows[i].Start.Before(rows[j].Start) })
		value := o.base
		for _, r := range rows {
			r.Net = r.Increments - r.Decrements + r.Corrections
			r.Opening = value
			r.Closing = r.Opening + r.Net + r.Adjustments
			value = r.Closing
			out = append(out, *r)
		}
	}
	return out
}

// periodStart is the start of the hour, day or month holding t, in loc: local midnight, which
// time.Date resolves across daylight-saving changes. An hour is an hour of absolute time (the
// zone's offsets are whole hours or half hours from UTC; a half-hour zone's hours start at :30
// UTC, so they are truncated in local time).
func periodStart(t time.Time, loc *time.Location, by Granularity) time.Time {
	l := t.In(loc)
	switch by {
	case ByMonth:
		return time.Date(l.Year(), l.Month(), 1, 0, 0, 0, 0, loc)
	case ByHour:
		return l.Add(-time.Duration(l.Minute())*time.Minute - time.Duration(l.Second())*time.Second - time.Duration(l.Nanosecond()))
	}
	return time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc)
}

// periodEnd is the start of the next period: an hour, a calendar day (23 or 25 hours across a
// daylight-saving change) or month later.
func periodEnd(start time.Time, by Granularity) time.Time {
	switch by {
	case ByMonth:
		return start.AddDate(0, 1, 0)
	case ByHour:
		return start.Add(time.Hour)
	}
	return start.AddDate(0, 0, 1)
}

func periodName(start time.Time, by Granularity) string {
	switch by {
	case ByMonth:
		return start.Format("2006-01")
	case ByHour:
		// The offset tells apart the two 02:00 hours of a day when clocks go back.
		return start.Format("2006-01-02T15:04Z07:00")
	}
	return start.Format("2006-01-02")
}
