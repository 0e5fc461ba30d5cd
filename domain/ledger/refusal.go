package ledger

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
)

// DefaultRefusalRepeatInterval is how often, at most, the repeats of one refused log version
// are recorded on its owner's upload stream (docs/uploads.md, "Refused logs").
const DefaultRefusalRepeatInterval = 5 * time.Minute

// refusalNamespace derives refusal and resolution ids (UUIDv5).
var refusalNamespace = uuid.MustParse("0b6f7c44-2f0e-4c55-9d8a-7a1c3f5e9b21")

// UnboundedLogDecoder is a LogDecoder that can also decode a log without the limit on new
// entries (its input-size limit still holds). Carrying out an operator's decision on a log
// refused for too many new entries needs it.
type UnboundedLogDecoder interface {
	LogDecoder
	DecodeUnbounded(ctx context.Context, data string, known func(LayerRef) bool) (*DecodedLog, error)
}

// refusalBook is the in-process part of recording refusals: counters by reason for the
// metrics, and repeats of recorded refusals not yet written (at most one event per interval).
type refusalBook struct {
	mu       sync.Mutex
	byReason map[string]int64
	// unwritten counts, per owner, refusals of the owner's open refused version not yet
	// recorded by an UploadRefusalRepeated event.
	unwritten map[domain.Owner]unwrittenRepeats
}

type unwrittenRepeats struct {
	refusal uuid.UUID
	count   int64
	newest  *domain.UploadRefused // the newest version refused since the last write, if newer
}

// RefusalsByReason counts the uploads refused for their content since start, by reason code
// (domain.Refusal*), recorded or not.
func (s *Service) RefusalsByReason() map[string]int64 {
	s.refusals.mu.Lock()
	defer s.refusals.mu.Unlock()
	out := make(map[string]int64, len(s.refusals.byReason))
	for k, v := range s.refusals.byReason {
		out[k] = v
	}
	return out
}

// refusalReason returns the reason code of a refusal that concerns a log's content.
func refusalReason(err error) (string, bool) {
	switch {
	case errors.Is(err, domain.ErrDataCorrupted):
		return domain.RefusalCorrupted, true
	case errors.Is(err, domain.ErrTooManyEntries):
		return domain.RefusalTooManyNew, true
	case errors.Is(err, domain.ErrInvalidInput):
		return domain.RefusalInvalidObject, true
	case errors.Is(err, domain.ErrFeatureLock):
		return domain.RefusalFeatureLock, true
	case errors.Is(err, domain.ErrInt32Limit):
		return domain.RefusalInt32Overflow, true
	case errors.Is(err, domain.ErrNotEnoughPermission):
		return domain.RefusalPermission, true
	}
	return "", false
}

// entryRefusal is a plan's refusal, with the first entry that broke a rule.
type entryRefusal struct {
	index int // among the plan's new entries, oldest first
	entry LogEntry
	err   error
}

func (e *entryRefusal) Error() string { return e.err.Error() }
func (e *entryRefusal) Unwrap() error { return e.err }

// checkEntry applies the rules of one entry to the projected state and the values the
// entries before it in the same upload reached: the value before and after it, or the
// refusal.
func checkEntry(st *state.State, c Caller, owner domain.Owner, onlyObject int64, e LogEntry, running map[int64]int32) (*state.Object, int32, int32, error) {
	dir := e.direction()
	if !c.Token.Allows(dir.Method()) {
		return nil, 0, 0, domain.ErrNotEnoughPermission
	}
	if err := c.Token.CheckAmount(e.Amount); err != nil {
		return nil, 0, 0, err
	}
	if onlyObject != 0 && e.ObjectID != onlyObject {
		return nil, 0, 0, domain.ErrInvalidInput
	}
	o, ok := st.Object(e.ObjectID)
	if !ok || o.Removed || o.Owner != owner {
		return nil, 0, 0, domain.ErrInvalidInput
	}
	value, seen := running[o.ID]
	if !seen {
		value = o.IntValue
	}
	next, err := domain.ApplyChange(value, dir, e.Amount, false, 0)
	if err != nil {
		return nil, 0, 0, err
	}
	return o, value, next, nil
}

// planOptions says how a plan carries out an operator's decision on a refused log.
type planOptions struct {
	skip       bool      // leave the entries that break a rule out instead of refusing
	resolution uuid.UUID // the decision carried out (uuid.Nil: an ordinary upload)
}

// skip leaves entry i of the plan out, recording why.
func (p *plan) skip(i int, e LogEntry, err error) {
	reason, _ := refusalReason(err)
	p.skipped[i] = true
	p.prepared.Skipped = append(p.prepared.Skipped, domain.SkippedEntry{
		Index: i, ObjectID: e.ObjectID, Decrement: e.Decrement, Amount: e.Amount, Reason: reason, Message: err.Error(),
	})
	p.changes = append(p.changes, domain.ValueChanged{
		ObjectID: e.ObjectID, Amount: e.Amount, Upload: &domain.UploadSource{Layer: hex.EncodeToString(e.Layer[:])},
	})
}

// decodeTrace is what the decoder's walk met: the outermost layer, the last layer offered and
// how many were new. A refused log is recorded from it when the decoder fails.
type decodeTrace struct {
	newest, last [32]byte
	offers, news int
}

func (t *decodeTrace) offered(layer [32]byte, known bool) {
	if t.offers == 0 {
		t.newest = layer
	}
	t.offers++
	t.last = layer
	if !known {
		t.news++
	}
}

// record describes a log the decoder refused. The layer it failed on is the last one offered:
// the decoder offers a layer before it decrypts it or counts it against the limit.
func (t *decodeTrace) record(err error) domain.UploadRefused {
	var r domain.UploadRefused
	if t.offers == 0 {
		return r // not even the outermost layer's header could be read
	}
	r.NewestLayer = hex.EncodeToString(t.newest[:])
	r.NewEntries = t.news
	if _, ok := refusalReason(err); ok {
		r.Offending = &domain.RefusedEntry{Layer: hex.EncodeToString(t.last[:]), Index: -1}
	}
	return r
}

// tooManyRecord describes a log with more new entries than one upload may apply; the first
// entry past the limit, counted from from, is the offending one.
func tooManyRecord(entries []LogEntry, from, limit int) domain.UploadRefused {
	r := domain.UploadRefused{NewestLayer: hex.EncodeToString(entries[len(entries)-1].Layer[:]), NewEntries: len(entries) - from}
	e := entries[from+limit]
	r.Offending = &domain.RefusedEntry{Layer: hex.EncodeToString(e.Layer[:]), Index: limit, ObjectID: e.ObjectID, Decrement: e.Decrement, Amount: e.Amount}
	return r
}

// entriesRecord describes a log whose entries a plan refused.
func entriesRecord(entries []LogEntry, err error) domain.UploadRefused {
	r := domain.UploadRefused{NewEntries: len(entries)}
	if len(entries) > 0 {
		r.NewestLayer = hex.EncodeToString(entries[len(entries)-1].Layer[:])
	}
	var er *entryRefusal
	if errors.As(err, &er) {
		e := er.entry
		r.Offending = &domain.RefusedEntry{Layer: hex.EncodeToString(e.Layer[:]), Index: er.index, ObjectID: e.ObjectID, Decrement: e.Decrement, Amount: e.Amount}
	}
	return r
}

// refused records an upload refused for its content on the owner's upload stream and returns
// the refusal unchanged, so the caller gets the same Cryptolens answer as without the record.
// Other errors pass through. Recording never fails the call: a record that cannot be written
// now is written by a later retry of the same log (clients retry by themselves).
func (s *Service) refused(ctx context.Context, c Caller, owner domain.Owner, err error, rec domain.UploadRefused) error {
	reason, ok := refusalReason(err)
	if !ok {
		return err
	}
	rec.Reason = reason
	rec.Message = err.Error()
	if de, ok := domain.AsError(err); ok {
		rec.Message = de.Message
	}
	s.refusals.mu.Lock()
	if s.refusals.byReason == nil {
		s.refusals.byReason = map[string]int64{}
	}
	s.refusals.byReason[reason]++
	s.refusals.mu.Unlock()
	// The record is written even if the client gave up waiting, within a bound.
	recCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if rerr := s.recordRefusal(recCtx, c, owner, rec); rerr != nil {
		s.logger.Warn("could not record a refused upload; a retry of the log will", "owner", owner.String(), "reason", reason, "err", rerr)
	}
	return err
}

// recordRefusal appends UploadRefused for a new refusal, or counts a repeat of the owner's open
// one and appends UploadRefusalRepeated at most once per interval. A repeat is a refusal for the
// same reason of the same version, or of any version within the interval after the record was
// last written (the
// License Server grows its file while it retries; each new version would otherwise be a new
// record, and every record an append that concurrent accepted uploads of the owner must plan
// again after). Appends carry the upload stream's projected revision and wait for any upload of
// the owner in progress, so they never come between an UploadPrepared and its decision.
func (s *Service) recordRefusal(ctx context.Context, c Caller, owner domain.Owner, rec domain.UploadRefused) error {
	meta := c.metadata()
	counted := false
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		if err := s.awaitUploadDecision(ctx, owner); err != nil {
			return err
		}
		var up state.Upload
		var open state.Refusal
		var isOpen bool
		s.view.Read(func(st *state.State) {
			up = *st.Upload(owner)
			open, isOpen = st.OpenRefusal(owner)
		})
		if up.Prepared != nil {
			continue
		}
		expected := expectedFor(up.Revision, up.Exists)
		now := s.clock().UTC()
		var ev eventstore.EventData
		var err error
		if isOpen && open.Reason == rec.Reason &&
			(open.NewestLayer == rec.NewestLayer || s.countedVersion(owner, open.RefusalID, rec.NewestLayer) || now.Sub(open.LastAt) < s.repeatInterval) {
			u := s.countRepeat(owner, open, rec, !counted)
			counted = true
			if now.Sub(open.LastAt) < s.repeatInterval {
				return nil // counted in memory; written with the next record after the interval
			}
			ev, err = newEvent(uuid.NewSHA1(open.RefusalID, binary.BigEndian.AppendUint64(nil, up.Revision)),
				domain.EventUploadRefusalRepeated, domain.UploadRefusalRepeated{RefusalID: open.RefusalID, Repeats: u.count, Newest: u.newest, At: now}, meta)
			if err != nil {
				return err
			}
			_, err = s.appendAndWait(ctx, domain.UploadStream(owner), expected, ev)
			if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
				continue
			}
			if err == nil {
				s.wroteRepeats(owner, open.RefusalID, u.count)
			}
			return err
		}
		var seed []byte
		seed = binary.BigEndian.AppendUint64(seed, up.Revision)
		seed = append(seed, owner.String()...)
		seed = append(seed, rec.NewestLayer...)
		seed = append(seed, rec.Reason...)
		rec.RefusalID = uuid.NewSHA1(refusalNamespace, seed)
		rec.At = now
		ev, err = newEvent(rec.RefusalID, domain.EventUploadRefused, rec, meta)
		if err != nil {
			return err
		}
		_, err = s.appendAndWait(ctx, domain.UploadStream(owner), expected, ev)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			continue
		}
		return err
	}
	return domain.ErrConcurrentChange
}

// countRepeat adds one repeat of the owner's open refusal (when add), remembering the refused
// version if it is newer than the newest recorded (more new entries: logs are cumulative), and
// returns the repeats not yet written.
func (s *Service) countRepeat(owner domain.Owner, open state.Refusal, rec domain.UploadRefused, add bool) unwrittenRepeats {
	s.refusals.mu.Lock()
	defer s.refusals.mu.Unlock()
	if s.refusals.unwritten == nil {
		s.refusals.unwritten = map[domain.Owner]unwrittenRepeats{}
	}
	u := s.refusals.unwritten[owner]
	if u.refusal != open.RefusalID {
		u = unwrittenRepeats{refusal: open.RefusalID} // a newer record replaced the one counted
	}
	if add {
		u.count++
		newest := open.NewEntries
		if u.newest != nil {
			newest = u.newest.NewEntries
		}
		if rec.NewestLayer != open.NewestLayer && rec.NewEntries >= newest {
			latest := rec
			u.newest = &latest
		}
	}
	s.refusals.unwritten[owner] = u
	return u
}

// countedVersion reports whether this instance counted the version as a repeat of the refusal
// and has not written it yet.
func (s *Service) countedVersion(owner domain.Owner, refusal uuid.UUID, newestLayer string) bool {
	s.refusals.mu.Lock()
	defer s.refusals.mu.Unlock()
	u := s.refusals.unwritten[owner]
	return u.refusal == refusal && u.newest != nil && u.newest.NewestLayer == newestLayer
}

// wroteRepeats takes n written repeats off the owner's unwritten count.
func (s *Service) wroteRepeats(owner domain.Owner, refusal uuid.UUID, n int64) {
	s.refusals.mu.Lock()
	defer s.refusals.mu.Unlock()
	u := s.refusals.unwritten[owner]
	if u.refusal != refusal {
		return
	}
	u.count -= n
	u.newest = nil
	if u.count <= 0 {
		delete(s.refusals.unwritten, owner)
		return
	}
	s.refusals.unwritten[owner] = u
}

// openResolution returns the owner's operator decision still to be carried out, if any.
func (s *Service) openResolution(owner domain.Owner) (domain.UploadResolutionDecided, bool) {
	var r domain.UploadResolutionDecided
	var ok bool
	s.view.Read(func(st *state.State) { r, ok = st.OpenResolution(owner) })
	return r, ok
}

// decodeLog decodes an upload; while an operator's decision on one of the owner's logs is
// open, without the limit on new entries, so that the decision can be carried out in chunks.
func (s *Service) decodeLog(ctx context.Context, data string, known func(LayerRef) bool, unbounded bool) (*DecodedLog, error) {
	if ud, ok := s.decoder.(UnboundedLogDecoder); ok && unbounded {
		return ud.DecodeUnbounded(ctx, data, known)
	}
	return s.decoder.Decode(ctx, data, known)
}

func indexOfLayer(entries []LogEntry, layer string) int {
	for i, e := range entries {
		if hex.EncodeToString(e.Layer[:]) == layer {
			return i
		}
	}
	return -1
}

// carryOut applies a log under an operator's decision: its entries up to the refused version's
// newest layer (entries[k]) in all-or-nothing chunks of at most s.maxNew entries, oldest first,
// leaving out the entries that break a rule if the decision says so; then the entries newer
// than that version as an ordinary upload. Each chunk is an ordinary upload (prepare, events,
// commit), so a chunk is all or nothing and an interrupted resolution resumes where the
// committed chunks end, on the next upload, on any instance.
func (s *Service) carryOut(ctx context.Context, c Caller, owner domain.Owner, onlyObject int64, decoded *DecodedLog, k int, res domain.UploadResolutionDecided) (UploadResult, error) {
	opts := planOptions{skip: res.Mode == domain.ResolveSkipEntries, resolution: res.ResolutionID}
	entries, stop := decoded.Entries, decoded.Stop
	part := entries[:k+1]
	// Check the whole refused version first: if one of its chunks would be refused (in-chunks
	// with an entry that breaks a rule), refuse the upload before any chunk is applied.
	if err := s.dryRun(ctx, c, owner, onlyObject, part, stop, opts); err != nil {
		return UploadResult{}, s.refused(ctx, c, owner, err, entriesRecord(part, err))
	}
	total := UploadResult{Known: -1}
	for {
		start := 0
		s.view.Read(func(st *state.State) { start = newPartStart(st, owner, part) })
		if start > k {
			break
		}
		end := min(start+s.maxNew, k+1)
		r, err := s.applyEntries(ctx, c, owner, onlyObject, decoded, entries[:end], opts)
		if err != nil {
			return UploadResult{}, s.refused(ctx, c, owner, err, entriesRecord(entries[:end], err))
		}
		total.Applied += r.Applied
		total.Skipped += r.Skipped
		if total.Known < 0 {
			total.Known = r.Known
		}
		s.logger.Info("resolution chunk applied", "owner", owner.String(), "resolution", res.ResolutionID, "applied", r.Applied, "skipped", r.Skipped)
	}
	if total.Known < 0 {
		total.Known = 0
	}
	if rest := len(entries) - (k + 1); rest > 0 {
		if rest > s.maxNew {
			return total, s.refused(ctx, c, owner, domain.ErrTooManyEntries, tooManyRecord(entries, k+1, s.maxNew))
		}
		r, err := s.applyEntries(ctx, c, owner, onlyObject, decoded, entries, planOptions{})
		if err != nil {
			return total, s.refused(ctx, c, owner, err, entriesRecord(entries, err))
		}
		total.Applied += r.Applied
	}
	return total, nil
}

// dryRun plans the whole of part, without the limit on new entries, and appends nothing.
func (s *Service) dryRun(ctx context.Context, c Caller, owner domain.Owner, onlyObject int64, part []LogEntry, stop *LayerRef, opts planOptions) error {
	var err error
	for synced := false; ; synced = true {
		if werr := s.awaitUploadDecision(ctx, owner); werr != nil {
			return werr
		}
		s.view.Read(func(st *state.State) { _, err = s.planUpload(st, c, owner, onlyObject, part, stop, opts) })
		if errors.Is(err, errUploadInProgress) {
			synced = false
			continue
		}
		if err == nil || synced {
			return err
		}
		if serr := s.syncView(ctx); serr != nil {
			return serr
		}
	}
}

// newPartStart is the index of the first entry of part newer than every applied one.
func newPartStart(st *state.State, owner domain.Owner, part []LogEntry) int {
	for i := len(part) - 1; i >= 0; i-- {
		if _, _, ok := st.KnownLayer(owner, part[i].Layer, part[i].Legacy); ok {
			return i + 1
		}
	}
	return 0
}

// ResolveUpload is an operator's decision on a refused log.
type ResolveUpload struct {
	// RefusalID names the refused log version (from the list of uploads); or, when uuid.Nil,
	// Owner's open refusal is meant.
	RefusalID uuid.UUID
	Owner     domain.Owner
	Mode      string // domain.ResolveInChunks or domain.ResolveSkipEntries
	Reason    string // required
	DecidedBy string // the operator's name, as they give it (default "admin")
}

// ResolveRefusedUpload records an operator's decision on an owner's refused log. The decision
// is carried out on the next upload of that version or a newer one; until then it is open and
// shown with the refusal.
func (s *Service) ResolveRefusedUpload(ctx context.Context, c Caller, cmd ResolveUpload) (domain.UploadResolutionDecided, error) {
	var none domain.UploadResolutionDecided
	if !c.Admin {
		return none, domain.ErrAccessDenied
	}
	cmd.Reason = strings.TrimSpace(cmd.Reason)
	if cmd.Reason == "" {
		return none, fmt.Errorf("%w: a reason is required", ErrInvalid)
	}
	if len(cmd.Reason) > 1000 {
		return none, fmt.Errorf("%w: the reason can be at most 1000 characters", ErrInvalid)
	}
	if cmd.Mode != domain.ResolveInChunks && cmd.Mode != domain.ResolveSkipEntries {
		return none, fmt.Errorf("%w: the mode is %q or %q", ErrInvalid, domain.ResolveInChunks, domain.ResolveSkipEntries)
	}
	cmd.DecidedBy = strings.TrimSpace(cmd.DecidedBy)
	if cmd.DecidedBy == "" {
		cmd.DecidedBy = "admin"
	}
	if err := s.syncView(ctx); err != nil {
		return none, err
	}
	for attempt := 0; attempt < s.maxAttempts; attempt++ {
		var owner domain.Owner
		var ok bool
		if cmd.RefusalID != uuid.Nil {
			s.view.Read(func(st *state.State) {
				for _, r := range st.OpenRefusals() {
					if r.RefusalID == cmd.RefusalID {
						owner, ok = ownerOfRefusal(st, r.RefusalID), true
					}
				}
			})
			if !ok {
				return none, fmt.Errorf("refused upload %s: %w (or no longer refused)", cmd.RefusalID, ErrNotFound)
			}
		} else {
			owner = cmd.Owner
		}
		if err := s.awaitUploadDecision(ctx, owner); err != nil {
			return none, err
		}
		var up state.Upload
		var open state.Refusal
		s.view.Read(func(st *state.State) {
			up = *st.Upload(owner)
			open, ok = st.OpenRefusal(owner)
		})
		if !ok {
			return none, fmt.Errorf("%w: %s has no refused upload to resolve", ErrInvalid, owner)
		}
		if cmd.RefusalID != uuid.Nil && open.RefusalID != cmd.RefusalID {
			return none, fmt.Errorf("refused upload %s: %w (or no longer refused)", cmd.RefusalID, ErrNotFound)
		}
		if up.Prepared != nil {
			continue
		}
		if err := resolvable(open, cmd.Mode); err != nil {
			return none, err
		}
		if up.Resolution != nil && up.Resolution.NewestLayer == open.NewestLayer && up.Resolution.Mode == cmd.Mode {
			return none, fmt.Errorf("%w: resolution %s already decides %s for this log; it is carried out on the next upload",
				ErrInvalid, up.Resolution.ResolutionID, cmd.Mode)
		}
		var seed []byte
		seed = binary.BigEndian.AppendUint64(seed, up.Revision)
		seed = append(seed, cmd.Mode...)
		d := domain.UploadResolutionDecided{
			ResolutionID: uuid.NewSHA1(open.RefusalID, seed), RefusalID: open.RefusalID, NewestLayer: open.NewestLayer,
			Mode: cmd.Mode, Reason: cmd.Reason, DecidedBy: cmd.DecidedBy, At: s.clock().UTC(),
		}
		ev, err := newEvent(d.ResolutionID, domain.EventUploadResolutionDecided, d, c.metadata())
		if err != nil {
			return none, err
		}
		_, err = s.appendAndWait(ctx, domain.UploadStream(owner), expectedFor(up.Revision, up.Exists), ev)
		if errors.Is(err, eventstore.ErrWrongExpectedVersion) {
			continue
		}
		if err != nil {
			return none, err
		}
		s.logger.Info("refused upload resolution decided", "owner", owner.String(), "refusal", open.RefusalID,
			"resolution", d.ResolutionID, "mode", d.Mode, "by", d.DecidedBy, "reason", d.Reason)
		return d, nil
	}
	return none, domain.ErrConcurrentChange
}

// resolvable says whether a decision of mode can clear a refusal. Chunks only help a log
// refused for its number of new entries: every other rule would refuse the chunk holding the
// offending entry again. A corrupted layer cannot be skipped: the layers inside it are
// unreadable, so nothing under it could be applied or known.
func resolvable(r state.Refusal, mode string) error {
	if r.NewestLayer == "" {
		return fmt.Errorf("%w: the refused log's outermost layer is unreadable; there is nothing to resolve", ErrInvalid)
	}
	switch {
	case r.Reason == domain.RefusalCorrupted:
		return fmt.Errorf("%w: a corrupted log cannot be resolved (%s): the layers inside the corrupted one cannot be read", ErrInvalid, r.Message)
	case mode == domain.ResolveInChunks && r.Reason != domain.RefusalTooManyNew:
		return fmt.Errorf("%w: --in-chunks cannot clear a refusal for %s (%q): the chunk holding the offending entry would be refused again; use --skip-entries",
			ErrInvalid, r.Reason, r.Message)
	}
	return nil
}

// ownerOfRefusal finds the owner whose open refusal has the id.
func ownerOfRefusal(st *state.State, id uuid.UUID) domain.Owner {
	keys := make([]string, 0, len(st.Uploads))
	for k := range st.Uploads {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		u := st.Uploads[k]
		if u.Refusal != nil && u.Refusal.RefusalID == id {
			return u.Owner
		}
	}
	return domain.Owner{}
}
