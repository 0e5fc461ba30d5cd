package ledger

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// errUploadInProgress says the owner has an undecided upload; the caller waits for its decision.
var errUploadInProgress = errors.New("another upload of this owner is in progress")

// MaxNewEntries is the most new entries one upload may apply.
const MaxNewEntries = 1000

// The range of log timestamps an event can record: RFC 3339 in JSON has four-digit years.
const (
	minLogTimestamp = -62167219200 // 0000-01-01T00:00:00Z
	maxLogTimestamp = 253402300799 // 9999-12-31T23:59:59Z
)

// futureTolerance is how far ahead of the server's clock a log timestamp may be before its
// event records the anomaly (clocks of offline machines drift).
const futureTolerance = 10 * time.Minute

// uploadNamespace derives upload and event ids (UUIDv5), so that a retried append of the same
// decision carries the same ids and the store recognises it.
var uploadNamespace = uuid.MustParse("6f1c1a52-8d1e-4b39-9a57-1e0f1d6c2b7e")

// UploadValues is the UploadValuesToKey / UploadValues command.
type UploadValues struct {
	Scope
	// ObjectID, when not 0, is the only object the log's new entries may target.
	ObjectID int64
	Data     string
}

// UploadResult says what an upload did.
type UploadResult struct {
	// Applied is the number of new entries applied.
	Applied int
	// Known is the number of entries of the file that were already applied before.
	Known int64
	// Skipped is the number of new entries an operator's skip-entries decision left out
	// (refusal.go); they are known from now on and count nothing.
	Skipped int
}

// plan is one attempt's decision on an upload.
type plan struct {
	owner    domain.Owner
	entries  []LogEntry
	prepared domain.UploadPrepared
	changes  []domain.ValueChanged       // one per entry, with the values before and after
	expected eventstore.ExpectedRevision // of the owner's upload stream
	skipped  map[int]bool                // indexes of entries left out by a skip-entries decision
}

// UploadValues applies the new entries of a usage log, all or nothing, each exactly once.
//
// The owner's upload stream is the commit point (docs/uploads.md): UploadPrepared lists the
// layers and the objects' shares, then each object's stream gets its events (which count for
// nothing yet), then UploadCommitted makes them count. A failure before the commit leaves
// every value unchanged; an undecided upload is committed or aborted by recovery.
func (s *Service) UploadValues(ctx context.Context, c Caller, cmd UploadValues) (UploadResult, error) {
	res, err := s.uploadValues(ctx, c, cmd)
	s.metrics.UploadFinished(outcomeOf(res, err))
	return res, err
}

func (s *Service) uploadValues(ctx context.Context, c Caller, cmd UploadValues) (UploadResult, error) {
	if !c.Token.AllowsAny(domain.MethodIncrementIntValue, domain.MethodDecrementIntValue) {
		return UploadResult{}, domain.ErrAccessDenied
	}
	var owner domain.Owner
	var err error
	s.view.Read(func(st *state.State) { owner, err = resolveOwner(st, c.Token, cmd.Scope) })
	if err != nil {
		// Refuse only on a projection that holds what the store holds (the key may be new).
		if serr := s.syncView(ctx); serr != nil {
			return UploadResult{}, serr
		}
		s.view.Read(func(st *state.State) { owner, err = resolveOwner(st, c.Token, cmd.Scope) })
	}
	if err != nil {
		return UploadResult{}, err
	}
	if cmd.Data == "" {
		return UploadResult{}, domain.ErrDataEmpty
	}
	if s.decoder == nil {
		return UploadResult{}, domain.ErrDataCorrupted
	}
	if err := s.awaitUploadDecision(ctx, owner); err != nil {
		return UploadResult{}, err
	}
	// The walk stops at the first known layer (under either identity); the decoded log says
	// which, to say how many entries the file held before it and to compare its bytes.
	var trace decodeTrace // what the walk met, for the record of a refusal (refusal.go)
	turn, err := s.decodes.start(ctx)
	if err != nil {
		return UploadResult{}, err
	}
	known := func(layer LayerRef) bool {
		// Called once per layer before its RSA operation: where the pool applies its limit.
		turn.layer(ctx)
		ok := s.layerKnown(owner, layer)
		trace.offered(layer.ID, ok)
		return ok
	}
	resolution, resolving := s.openResolution(owner)
	decoded, err := s.decodeLog(ctx, cmd.Data, known, resolving)
	turn.end()
	if err != nil {
		s.logger.Debug("upload not decoded", "request_id", c.RequestID, "owner", owner.String(), "bytes", len(cmd.Data), "err", err)
		return UploadResult{}, s.refused(ctx, c, owner, err, trace.record(err))
	}
	entries := decoded.Entries
	s.logger.Debug("upload decoded", "request_id", c.RequestID, "owner", owner.String(), "bytes", len(cmd.Data),
		"new_entries", len(entries), "reached_known_layer", decoded.Stop != nil)
	if err := s.checkIntegrity(ctx, c, owner, decoded); err != nil {
		return UploadResult{}, err
	}
	if resolving {
		if k := indexOfLayer(entries, resolution.NewestLayer); k >= 0 {
			return s.carryOut(ctx, c, owner, cmd.ObjectID, decoded, k, resolution)
		}
	}
	if len(entries) > s.maxNew {
		return UploadResult{}, s.refused(ctx, c, owner, domain.ErrTooManyEntries, tooManyRecord(entries, 0, s.maxNew))
	}
	res, err := s.applyEntries(ctx, c, owner, cmd.ObjectID, decoded, entries, planOptions{})
	if err != nil {
		return UploadResult{}, s.refused(ctx, c, owner, err, entriesRecord(entries, err))
	}
	return res, nil
}

// applyEntries plans and runs the upload of the entries still new (entries is decoded's or a
// prefix of them), deciding again on fresh state after a conflict, a bounded number of times.
func (s *Service) applyEntries(ctx context.Context, c Caller, owner domain.Owner, onlyObject int64, decoded *DecodedLog, entries []LogEntry, opts planOptions) (UploadResult, error) {
	var err error
	synced := false
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		if err := s.awaitUploadDecision(ctx, owner); err != nil {
			return UploadResult{}, err
		}
		var p *plan
		s.view.Read(func(st *state.State) {
			p, err = s.planUpload(st, c, owner, onlyObject, entries, decoded.Stop, opts)
			if err == nil {
				addDigests(st, p, decoded)
			}
		})
		if errors.Is(err, errUploadInProgress) {
			s.metrics.Retry()
			s.logger.Debug("upload waits: another upload of the owner was prepared", "request_id", c.RequestID, "attempt", attempt+1)
			continue // another upload of this owner was prepared since we waited
		}
		if err != nil && !synced {
			// An entry may name an object created through another instance a moment ago.
			synced = true
			if serr := s.syncView(ctx); serr != nil {
				return UploadResult{}, serr
			}
			attempt--
			continue
		}
		if err != nil {
			return UploadResult{}, err
		}
		s.logger.Debug("upload planned", "request_id", c.RequestID, "attempt", attempt+1, "entries", len(p.entries),
			"already_applied", len(entries)-len(p.entries), "objects", len(p.prepared.Changes), "known", p.prepared.BaseDepth)
		if len(p.entries) == 0 {
			return UploadResult{Known: p.prepared.BaseDepth}, nil
		}
		res, err := s.runUpload(ctx, c, p)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			s.metrics.Retry()
			s.logger.Debug("upload lost a race; planning again", "request_id", c.RequestID, "attempt", attempt+1, "err", err)
			continue
		}
		return res, err
	}
	return UploadResult{}, domain.ErrConcurrentChange
}

// planUpload checks the entries still new against the projected values and decides what to
// append. Entries whose layers were applied meanwhile (by a concurrent upload of an overlapping
// version of the same file) are dropped.
func (s *Service) planUpload(st *state.State, c Caller, owner domain.Owner, onlyObject int64, all []LogEntry, stop *LayerRef, opts planOptions) (*plan, error) {
	p := &plan{owner: owner, skipped: map[int]bool{}}
	// The entries are oldest first and each layer wraps the older ones, so the newest applied
	// layer among them marks where the new part starts.
	start := 0
	var base state.LayerInfo
	for i := len(all) - 1; i >= 0; i-- {
		if info, _, ok := st.KnownLayer(owner, all[i].Layer, all[i].Legacy); ok {
			start, base = i+1, info
			break
		}
	}
	if start == 0 && stop != nil {
		base, _, _ = st.KnownLayer(owner, stop.ID, stop.Legacy)
	}
	p.entries = all[start:]
	p.prepared.BaseDepth = base.Depth
	if len(p.entries) == 0 {
		return p, nil
	}
	up := st.Upload(owner)
	if up.Prepared != nil {
		// Deciding now would plan against values that the undecided upload may still change.
		return nil, errUploadInProgress
	}
	p.expected = expectedFor(up.Revision, up.Exists)

	running := map[int64]int32{}
	revision := map[int64]uint64{}
	count := map[int64]int{}
	prevTS := base.Timestamp
	now := s.clock()
	for i, e := range p.entries {
		o, value, next, err := checkEntry(st, c, owner, onlyObject, e, running)
		if err != nil {
			if !opts.skip {
				return nil, &entryRefusal{index: i, entry: e, err: err}
			}
			// An operator decided to leave the entries that break a rule out (refusal.go).
			p.skip(i, e, err)
			prevTS = e.Timestamp
			continue
		}
		if _, seen := revision[o.ID]; !seen {
			revision[o.ID] = o.Revision
		}
		running[o.ID] = next
		count[o.ID]++
		logTime := time.Unix(e.Timestamp, 0).UTC()
		src := &domain.UploadSource{Layer: hex.EncodeToString(e.Layer[:]), LogTimestamp: logTime}
		switch {
		case e.Timestamp < minLogTimestamp || e.Timestamp > maxLogTimestamp:
			// An untrusted timestamp no event could record (JSON times have four-digit years):
			// the entry still counts, at the nearest representable time, with the anomaly.
			src.LogTimestamp = time.Unix(min(max(e.Timestamp, minLogTimestamp), maxLogTimestamp), 0).UTC()
			logTime = src.LogTimestamp
			src.Anomaly = fmt.Sprintf("timestamp %d is outside the years 0000-9999", e.Timestamp)
		case prevTS != 0 && e.Timestamp < prevTS:
			src.Anomaly = fmt.Sprintf("timestamp %d is earlier than the previous layer's %d", e.Timestamp, prevTS)
		case logTime.After(now.Add(futureTolerance)):
			src.Anomaly = fmt.Sprintf("timestamp %d is in the future", e.Timestamp)
		}
		prevTS = e.Timestamp
		p.changes = append(p.changes, domain.ValueChanged{
			ObjectID: o.ID, Amount: e.Amount, Before: value, After: next, At: logTime, Upload: src,
		})
	}
	ids := make([]int64, 0, len(count))
	for id := range count {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	newest := p.entries[len(p.entries)-1].Layer
	var seed [8 + 8 + 1]byte
	binary.BigEndian.PutUint64(seed[0:], uint64(up.Revision))
	binary.BigEndian.PutUint64(seed[8:], uint64(owner.ID))
	seed[16] = byte(owner.Type)
	if up.Exists {
		seed[16] |= 0x80
	}
	p.prepared.UploadID = uuid.NewSHA1(uploadNamespace, append(seed[:], newest[:]...))
	p.prepared.Owner = owner
	p.prepared.Instance = s.instance
	if opts.resolution != uuid.Nil {
		p.prepared.Resolution = &opts.resolution
	}
	p.prepared.At = now.UTC()
	for i, e := range p.entries {
		p.prepared.Layers = append(p.prepared.Layers, p.changes[i].Upload.Layer)
		p.prepared.Timestamps = append(p.prepared.Timestamps, e.Timestamp)
		p.changes[i].Upload.UploadID = p.prepared.UploadID
		p.changes[i].Upload.Entry = i + 1
	}
	for _, id := range ids {
		p.prepared.Changes = append(p.prepared.Changes, domain.PlannedStep{ObjectID: id, FromRevision: revision[id], Events: count[id]})
	}
	return p, nil
}

// runUpload appends a plan: prepare, the objects' events, commit. A refusal for an expected
// revision aborts the upload and comes back as ErrWrongExpectedVersion for a fresh attempt.
func (s *Service) runUpload(ctx context.Context, c Caller, p *plan) (UploadResult, error) {
	meta := c.metadata()
	uploadStream := domain.UploadStream(p.owner)
	// Every event is encoded before anything is appended: a failure that would recur on every
	// retry must not leave a prepared upload behind.
	prep, err := newEvent(uuid.NewSHA1(p.prepared.UploadID, []byte("prepared")), domain.EventUploadPrepared, p.prepared, meta)
	if err != nil {
		return UploadResult{}, err
	}
	byObject := map[int64][]eventstore.EventData{}
	for i, e := range p.entries {
		if p.skipped[i] {
			continue
		}
		ev, err := newEvent(uuid.NewSHA1(p.prepared.UploadID, e.Layer[:]), e.direction().EventType(), p.changes[i], meta)
		if err != nil {
			return UploadResult{}, err
		}
		// Who made the change, compactly: an upload has many entries (docs/encoding.md).
		if ev.Metadata, err = domain.CompactMetadata(meta); err != nil {
			return UploadResult{}, err
		}
		byObject[e.ObjectID] = append(byObject[e.ObjectID], ev)
	}
	res, err := s.appendAndWait(ctx, uploadStream, p.expected, prep)
	if err != nil {
		return UploadResult{}, err
	}
	prepRevision := res.NextExpectedRevision

	for _, step := range p.prepared.Changes {
		_, err := s.store.Append(ctx, domain.DataObjectStream(step.ObjectID), eventstore.Exact(step.FromRevision), byObject[step.ObjectID]...)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			// A direct call changed the object after the plan: decide again on fresh state.
			s.conflict()
			s.abort(ctx, p, prepRevision, AbortConflict, "an object changed during the upload", meta)
			if cerr := s.catchUp(ctx, domain.DataObjectStream(step.ObjectID)); cerr != nil {
				return UploadResult{}, cerr
			}
			return UploadResult{}, err
		}
		if err != nil {
			cause := unavailable(fmt.Errorf("append upload events: %w", err))
			s.abort(ctx, p, prepRevision, AbortStoreFailure, cause.Error(), meta)
			return UploadResult{}, cause
		}
	}
	err = s.decide(ctx, p.owner, p.prepared.UploadID, prepRevision, true, "", meta)
	if err != nil && !errors.Is(err, eventstore.ErrWrongExpectedVersion) && ctx.Err() == nil {
		// The commit is idempotent (same event id, same expected revision): try once more
		// rather than leave the owner's objects waiting a lease for recovery.
		retryCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = s.decide(retryCtx, p.owner, p.prepared.UploadID, prepRevision, true, "", meta)
		cancel()
	}
	if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
		// Recovery decided this upload first. If it committed it, the entries count.
		if s.layerApplied(p.owner, p.entries[len(p.entries)-1].Layer) {
			return p.result(), nil
		}
		return UploadResult{}, err
	}
	if err != nil {
		return UploadResult{}, err
	}
	return p.result(), nil
}

// result is what a committed plan did.
func (p *plan) result() UploadResult {
	return UploadResult{Applied: len(p.entries) - len(p.skipped), Known: p.prepared.BaseDepth, Skipped: len(p.skipped)}
}

// layerApplied reports whether the projection holds the layer as applied for the owner.
func (s *Service) layerApplied(owner domain.Owner, layer [32]byte) bool {
	var ok bool
	s.view.Read(func(st *state.State) { _, ok = st.Layer(owner, layer) })
	return ok
}

// abort appends the abort of a prepared upload after a failure, even if the caller's context
// ended. If the abort cannot be written either, recovery will decide the upload later.
// why is the reason's kind for the metrics (AbortConflict, AbortStoreFailure).
func (s *Service) abort(ctx context.Context, p *plan, prepRevision uint64, why, reason string, meta domain.Metadata) {
	abortCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.decide(abortCtx, p.owner, p.prepared.UploadID, prepRevision, false, reason, meta); err != nil {
		s.logger.Warn("could not abort an upload; recovery will", "upload", p.prepared.UploadID, "err", err)
		return
	}
	s.metrics.UploadAborted(why)
}

// decide appends the commit or the abort of a prepared upload.
func (s *Service) decide(ctx context.Context, owner domain.Owner, uploadID uuid.UUID, prepRevision uint64, commit bool, reason string, meta domain.Metadata) error {
	var ev eventstore.EventData
	var err error
	if commit {
		ev, err = newEvent(uuid.NewSHA1(uploadID, []byte("committed")), domain.EventUploadCommitted,
			domain.UploadCommitted{UploadID: uploadID, At: s.clock().UTC()}, meta)
	} else {
		ev, err = newEvent(uuid.NewSHA1(uploadID, []byte("aborted")), domain.EventUploadAborted,
			domain.UploadAborted{UploadID: uploadID, Reason: reason, At: s.clock().UTC()}, meta)
	}
	if err != nil {
		return err
	}
	_, err = s.appendAndWait(ctx, domain.UploadStream(owner), eventstore.Exact(prepRevision), ev)
	return err
}

// awaitUploadDecision waits while the owner has an undecided upload; after the lease it decides
// the upload itself.
func (s *Service) awaitUploadDecision(ctx context.Context, owner domain.Owner) error {
	for {
		waitCtx, cancel := context.WithTimeout(ctx, s.lease)
		err := s.view.WaitUntil(waitCtx, func(st *state.State) bool { return st.Upload(owner).Prepared == nil })
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			return unavailable(err)
		}
		if _, err := s.RecoverUploads(ctx, false); err != nil {
			return err
		}
	}
}

// RecoverUploads decides undecided uploads: an upload whose every planned event is in its
// objects' streams is committed, any other is aborted. Without force it leaves uploads younger
// than the lease alone, as their instance may still be working on them; with force (a single
// instance starting up, when no other process can hold the store) it decides them all.
func (s *Service) RecoverUploads(ctx context.Context, force bool) (int, error) {
	type undecided struct {
		prepared   domain.UploadPrepared
		revision   uint64
		allPresent bool
	}
	var todo []undecided
	now := s.clock()
	s.view.Read(func(st *state.State) {
		for _, p := range st.PendingUploads() {
			if !force && now.Sub(p.At) < s.lease {
				continue
			}
			want := 0
			for _, step := range p.Changes {
				want += step.Events
			}
			todo = append(todo, undecided{prepared: p, revision: st.Upload(p.Owner).Revision, allPresent: st.PendingEvents(p) == want})
		}
	})
	decided := 0
	for _, u := range todo {
		reason := "recovery: the upload was interrupted before all its events were written"
		err := s.decide(ctx, u.prepared.Owner, u.prepared.UploadID, u.revision, u.allPresent, reason, domain.Metadata{})
		switch {
		case errors.Is(err, eventstore.ErrWrongExpectedVersion):
			// Its own instance, or another recovery, decided it first.
		case err != nil:
			return decided, err
		default:
			decided++
			if !u.allPresent {
				s.metrics.UploadAborted(AbortRecovery)
			}
			s.logger.Info("recovered an interrupted upload", "upload", u.prepared.UploadID, "owner", u.prepared.Owner.String(), "committed", u.allPresent)
		}
	}
	return decided, nil
}

// RunRecovery decides stale uploads every half lease until ctx ends, so that an instance that
// died mid-upload never blocks its owner's objects for longer than the lease.
func (s *Service) RunRecovery(ctx context.Context) {
	t := time.NewTicker(s.lease / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.RecoverUploads(ctx, false); err != nil && ctx.Err() == nil {
				s.logger.Error("upload recovery", "err", err)
			}
		}
	}
}
