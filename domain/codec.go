package domain

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// The event codec (docs/encoding.md). Most event types are stored as JSON objects, as they
// always were. The hot ones have a compact form, written by EncodeEvent and read by the typed
// decoders below without reflection:
//
//   - IncrementApplied / DecrementApplied (ValueChanged): a JSON array, so that the body stays
//     JSON (readable in KurrentDB's UI, decodable by json.Unmarshal through
//     ValueChanged.UnmarshalJSON) yet small: an upload entry names its layer by its index in
//     the upload's UploadPrepared instead of repeating the 64-character identity.
//   - UploadPrepared and UploadCommitted: binary, starting with binaryMagic, a byte no JSON
//     text starts with; layer identities and digests are raw 32-byte values.
//
// Every decoder also reads the JSON object form, so that every event ever written keeps
// decoding (a ValueChanged object as json.Marshal writes it without reflection too). A body the
// compact form cannot carry exactly (a layer that is not a 64-digit lowercase hex identity, a
// legacy alias, values that do not relate as the ledger writes them) is written as JSON. An
// upload entry's metadata has a compact JSON form as well (CompactMetadata).

// binaryMagic starts every binary event body: a control character, which no JSON text starts
// with, so JSON and binary bodies are told apart by their first byte.
const binaryMagic = 0x01

// Binary body kinds, the byte after binaryMagic.
const (
	kindUploadPrepared  = 1
	kindUploadCommitted = 2
)

// Forms of the compact ValueChanged array, its first element.
const (
	valueChangedDirect = 1 // [1,objectId,delta,after,atSeconds,atNanos(,"correction")]
	valueChangedUpload = 2 // [2,objectId,delta,after,logSeconds,"uploadId",entry(,"anomaly")]
)

// In the compact ValueChanged, delta is the signed change (negative for a decrement): Amount is
// its absolute value and Before is After minus delta, which is how every event the ledger
// writes relates them. A body where they do not relate so is written as JSON.

// IsBinary reports whether an event body is in a binary form (not JSON).
func IsBinary(data []byte) bool { return len(data) > 0 && data[0] == binaryMagic }

// EncodeEvent encodes an event body for the store: the compact form for ValueChanged,
// UploadPrepared and UploadCommitted when it carries the body exactly, JSON otherwise. typ is
// the event type; body is the event's value (or a pointer to it).
func EncodeEvent(typ string, body any) ([]byte, error) {
	switch b := body.(type) {
	case ValueChanged:
		if out, ok := appendValueChanged(nil, typ, &b); ok {
			return out, nil
		}
	case *ValueChanged:
		if out, ok := appendValueChanged(nil, typ, b); ok {
			return out, nil
		}
	case UploadPrepared:
		if typ == EventUploadPrepared {
			if out, ok := appendUploadPrepared(nil, &b); ok {
				return out, nil
			}
		}
	case *UploadPrepared:
		if typ == EventUploadPrepared {
			if out, ok := appendUploadPrepared(nil, b); ok {
				return out, nil
			}
		}
	case UploadCommitted:
		if typ == EventUploadCommitted {
			return appendUploadCommitted(nil, &b), nil
		}
	case *UploadCommitted:
		if typ == EventUploadCommitted {
			return appendUploadCommitted(nil, b), nil
		}
	}
	out, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	return out, nil
}

// DecodeValueChanged decodes the body of an IncrementApplied or DecrementApplied event, in any
// form. An upload entry in the compact form names its layer by Upload.Entry only (Layer is
// empty): UploadPrepared.EntryLayer gives it.
func DecodeValueChanged(data []byte) (ValueChanged, error) {
	var v ValueChanged
	err := v.UnmarshalJSON(data)
	return v, err
}

// DecodeValueChangedInto is DecodeValueChanged into v, which keeps the upload of an entry in the
// compact form in *upload (v.Upload then points at it) instead of allocating it: a replay
// decodes millions of entries into storage it allocates in batches. Other forms allocate as
// DecodeValueChanged does; v.Upload == upload tells which.
func DecodeValueChangedInto(data []byte, v *ValueChanged, upload *UploadSource) error {
	i := skipSpace(data, 0)
	if i < len(data) && data[i] == '[' {
		return decodeValueChangedArray(data[i:], v, upload)
	}
	return v.UnmarshalJSON(data)
}

// DecodeUploadPrepared decodes the body of an UploadPrepared event, binary or JSON.
func DecodeUploadPrepared(data []byte) (UploadPrepared, error) {
	var p UploadPrepared
	if !IsBinary(data) {
		if err := json.Unmarshal(data, &p); err != nil {
			return p, err
		}
		return p, nil
	}
	err := decodeUploadPrepared(data, &p, nil)
	return p, err
}

// PreparedHashes are the layer identities and digests of a binary UploadPrepared body as the
// raw 32-byte values it holds, in the order of UploadPrepared.Layers: what a replay indexes
// layers by, without reading the hex strings back.
type PreparedHashes struct {
	Layers  [][32]byte
	Digests [][32]byte // empty when the body has none
	// FileDigest is UploadPrepared.FileDigest raw when HasFileDigest.
	FileDigest    [32]byte
	HasFileDigest bool
}

// DecodeUploadPreparedHashes is DecodeUploadPrepared that also returns the raw hashes of a
// binary body (nil for a JSON body, whose strings may be in any form).
func DecodeUploadPreparedHashes(data []byte) (UploadPrepared, *PreparedHashes, error) {
	var p UploadPrepared
	if !IsBinary(data) {
		err := json.Unmarshal(data, &p)
		return p, nil, err
	}
	h := &PreparedHashes{}
	if err := decodeUploadPrepared(data, &p, h); err != nil {
		return p, nil, err
	}
	return p, h, nil
}

// PreparedUploadID returns the upload id of an UploadPrepared body without decoding its
// layers.
func PreparedUploadID(data []byte) (uuid.UUID, error) {
	if !IsBinary(data) {
		var p struct {
			UploadID uuid.UUID `json:"uploadId"`
		}
		err := json.Unmarshal(data, &p)
		return p.UploadID, err
	}
	r := binReader{b: data}
	r.header(kindUploadPrepared)
	r.byte() // flags
	id := r.uuid()
	return id, r.err
}

// DecodeUploadCommitted decodes the body of an UploadCommitted event, binary or JSON.
func DecodeUploadCommitted(data []byte) (UploadCommitted, error) {
	var c UploadCommitted
	if !IsBinary(data) {
		err := json.Unmarshal(data, &c)
		return c, err
	}
	r := binReader{b: data}
	r.header(kindUploadCommitted)
	c.UploadID = r.uuid()
	c.At = r.time()
	return c, r.done()
}

// DecodeUploadDecision returns the upload an UploadCommitted or UploadAborted event decides,
// and the abort's reason ("" for a commit).
func DecodeUploadDecision(typ string, data []byte) (uuid.UUID, string, error) {
	if typ == EventUploadCommitted {
		c, err := DecodeUploadCommitted(data)
		return c.UploadID, "", err
	}
	var a UploadAborted
	err := json.Unmarshal(data, &a)
	return a.UploadID, a.Reason, err
}

// DecodeEvent decodes an event body of type typ into v, a pointer to the event's struct, in
// any form the codec writes.
func DecodeEvent(typ string, data []byte, v any) error {
	var err error
	switch p := v.(type) {
	case *ValueChanged:
		*p, err = DecodeValueChanged(data)
	case *UploadPrepared:
		*p, err = DecodeUploadPrepared(data)
	case *UploadCommitted:
		*p, err = DecodeUploadCommitted(data)
	default:
		if IsBinary(data) {
			return fmt.Errorf("decode %s: a binary body does not decode into %T", typ, v)
		}
		err = json.Unmarshal(data, v)
	}
	if err != nil {
		return fmt.Errorf("decode %s: %w", typ, err)
	}
	return nil
}

// EventJSON returns an event body as a JSON object, for people and APIs: a compact or binary
// body is decoded and written as the JSON form; a JSON body is returned as it is.
func EventJSON(typ string, data []byte) (json.RawMessage, error) {
	var v any
	switch {
	case IsBinary(data) && typ == EventUploadPrepared:
		p, err := DecodeUploadPrepared(data)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", typ, err)
		}
		v = p
	case IsBinary(data) && typ == EventUploadCommitted:
		c, err := DecodeUploadCommitted(data)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", typ, err)
		}
		v = c
	case len(data) > 0 && data[0] == '[' && (typ == EventIncrementApplied || typ == EventDecrementApplied):
		c, err := DecodeValueChanged(data)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", typ, err)
		}
		v = c
	default:
		return json.RawMessage(data), nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s as JSON: %w", typ, err)
	}
	return b, nil
}

// EntryLayer returns the layer identity of an upload entry of this upload: src.Layer when the
// event recorded it, else the layer at src.Entry in Layers.
func (p *UploadPrepared) EntryLayer(src *UploadSource) string {
	if src.Layer != "" || src.Entry <= 0 || src.Entry > len(p.Layers) {
		return src.Layer
	}
	return p.Layers[src.Entry-1]
}

// UnmarshalJSON reads a ValueChanged in the compact array form or the JSON object form.
func (v *ValueChanged) UnmarshalJSON(data []byte) error {
	i := skipSpace(data, 0)
	if i < len(data) && data[i] == '[' {
		return decodeValueChangedArray(data[i:], v, nil)
	}
	if decodeLegacyValueChanged(data, v) {
		return nil
	}
	type plain ValueChanged // without this method
	var p plain
	if err := json.Unmarshal(data, &p); err != nil {
		return err
	}
	*v = ValueChanged(p)
	return nil
}

// appendValueChanged writes the compact array form of an event of type typ, or reports that
// it cannot carry v.
func appendValueChanged(b []byte, typ string, v *ValueChanged) ([]byte, bool) {
	delta := v.Amount
	switch typ {
	case EventIncrementApplied:
	case EventDecrementApplied:
		delta = -v.Amount
	default:
		return nil, false
	}
	if v.Amount < 0 || int64(v.Before)+delta != int64(v.After) {
		return nil, false
	}
	if v.Upload == nil {
		b = append(b, '[', '0'+valueChangedDirect)
		b = appendInts(b, v.ObjectID, delta, int64(v.After), v.At.Unix(), int64(v.At.Nanosecond()))
		if v.Correction != "" {
			b = appendJSONString(append(b, ','), v.Correction)
		}
		return append(b, ']'), true
	}
	u := v.Upload
	if v.Correction != "" || u.Entry <= 0 || u.UploadID == uuid.Nil || v.At.Nanosecond() != 0 || !v.At.Equal(u.LogTimestamp) {
		return nil, false
	}
	b = append(b, '[', '0'+valueChangedUpload)
	b = appendInts(b, v.ObjectID, delta, int64(v.After), v.At.Unix())
	b = append(b, ',', '"')
	b = base64.RawURLEncoding.AppendEncode(b, u.UploadID[:])
	b = append(b, '"', ',')
	b = strconv.AppendInt(b, int64(u.Entry), 10)
	if u.Anomaly != "" {
		b = appendJSONString(append(b, ','), u.Anomaly)
	}
	return append(b, ']'), true
}

func appendInts(b []byte, vs ...int64) []byte {
	for _, v := range vs {
		b = strconv.AppendInt(append(b, ','), v, 10)
	}
	return b
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}

// decodeValueChangedArray reads the compact array form.
// decodeValueChangedArray decodes the compact form into v; an upload entry's source goes to
// *upload, or to a new UploadSource when upload is nil.
func decodeValueChangedArray(data []byte, v *ValueChanged, upload *UploadSource) error {
	s := arrayScanner{b: data, i: 1}
	form := s.int()
	*v = ValueChanged{ObjectID: s.int()}
	delta := s.int()
	v.After = s.int32()
	before := int64(v.After) - delta
	if delta == math.MinInt64 || int64(int32(before)) != before {
		s.fail("change out of range")
	}
	v.Amount, v.Before = max(delta, -delta), int32(before)
	switch form {
	case valueChangedDirect:
		sec, nsec := s.int(), s.int()
		v.At = time.Unix(sec, nsec).UTC()
		if s.more() {
			v.Correction = s.string()
		}
	case valueChangedUpload:
		v.At = time.Unix(s.int(), 0).UTC()
		u := upload
		if u == nil {
			u = &UploadSource{}
		}
		*u = UploadSource{LogTimestamp: v.At}
		u.UploadID = s.uuid()
		u.Entry = int(s.int())
		if s.more() {
			u.Anomaly = s.string()
		}
		v.Upload = u
	default:
		if s.err == nil {
			s.err = fmt.Errorf("unknown form %d", form)
		}
	}
	s.end()
	if s.err != nil {
		return fmt.Errorf("compact ValueChanged: %w", s.err)
	}
	return nil
}

// arrayScanner reads the elements of a flat JSON array of integers and strings, as
// appendValueChanged writes it (whitespace allowed). Errors stick.
type arrayScanner struct {
	b     []byte
	i     int
	first bool
	err   error
}

func (s *arrayScanner) fail(what string) {
	if s.err == nil {
		s.err = fmt.Errorf("%s at byte %d", what, s.i)
	}
}

// next moves to the start of the next element.
func (s *arrayScanner) next() bool {
	if s.err != nil {
		return false
	}
	s.i = skipSpace(s.b, s.i)
	if s.first {
		if s.i >= len(s.b) || s.b[s.i] != ',' {
			s.fail("missing element")
			return false
		}
		s.i = skipSpace(s.b, s.i+1)
	}
	s.first = true
	if s.i >= len(s.b) {
		s.fail("truncated")
		return false
	}
	return true
}

// more reports whether another element follows.
func (s *arrayScanner) more() bool {
	if s.err != nil {
		return false
	}
	i := skipSpace(s.b, s.i)
	return i < len(s.b) && s.b[i] == ','
}

func (s *arrayScanner) int() int64 {
	if !s.next() {
		return 0
	}
	start, neg := s.i, s.b[s.i] == '-'
	if neg {
		s.i++
	}
	var n uint64
	digits := 0
	for ; s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9'; s.i++ {
		if n > (math.MaxUint64-9)/10 {
			s.i = start
			s.fail("integer out of range")
			return 0
		}
		n = n*10 + uint64(s.b[s.i]-'0')
		digits++
	}
	switch {
	case digits == 0:
		s.i = start
		s.fail("bad integer")
		return 0
	case neg && n <= 1<<63:
		return int64(-n)
	case !neg && n < 1<<63:
		return int64(n)
	}
	s.i = start
	s.fail("integer out of range")
	return 0
}

func (s *arrayScanner) int32() int32 {
	n := s.int()
	if int64(int32(n)) != n {
		s.fail("integer out of int32 range")
	}
	return int32(n)
}

func (s *arrayScanner) string() string {
	raw, escaped := s.quoted()
	if s.err != nil {
		return ""
	}
	if !escaped {
		return string(raw[1 : len(raw)-1])
	}
	var out string
	if err := json.Unmarshal(raw, &out); err != nil {
		s.fail("bad string")
	}
	return out
}

// quoted reads a string element as it is written, quotes included, and reports whether it has
// escapes.
func (s *arrayScanner) quoted() (raw []byte, escaped bool) {
	if !s.next() {
		return nil, false
	}
	if s.b[s.i] != '"' {
		s.fail("expected a string")
		return nil, false
	}
	start := s.i
	for s.i++; s.i < len(s.b) && s.b[s.i] != '"'; s.i++ {
		if s.b[s.i] == '\\' {
			escaped = true
			s.i++
		}
	}
	if s.i >= len(s.b) {
		s.fail("unterminated string")
		return nil, false
	}
	s.i++
	return s.b[start:s.i], escaped
}

// uuid reads a UUID in 22 characters of base64, from the body's bytes when the string has no
// escapes (the form the codec writes).
func (s *arrayScanner) uuid() uuid.UUID {
	var id uuid.UUID
	raw, escaped := s.quoted()
	if s.err != nil {
		return id
	}
	text := raw[1 : len(raw)-1]
	if escaped {
		var str string
		if err := json.Unmarshal(raw, &str); err != nil {
			s.fail("bad string")
			return id
		}
		text = []byte(str)
	}
	if len(text) != 22 { // checked first: Decode writes past id for longer text
		s.fail("bad upload id")
		return id
	}
	if n, err := base64.RawURLEncoding.Decode(id[:], text); err != nil || n != len(id) {
		s.fail("bad upload id")
	}
	return id
}

// end checks that the array closes and nothing follows.
func (s *arrayScanner) end() {
	if s.err != nil {
		return
	}
	s.i = skipSpace(s.b, s.i)
	if s.i >= len(s.b) || s.b[s.i] != ']' {
		s.fail("expected the end of the array")
		return
	}
	if skipSpace(s.b, s.i+1) != len(s.b) {
		s.i++
		s.fail("trailing data")
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// Presence flags of the binary UploadPrepared.
const (
	preparedResolution = 1 << iota
	preparedFileDigest
	preparedDigests
	preparedLength // the newest layer's EncryptedObject length, after the file digest
)

// appendUploadPrepared writes the binary form, or reports that it cannot carry p.
func appendUploadPrepared(b []byte, p *UploadPrepared) ([]byte, bool) {
	if p.Base != nil || (len(p.Digests) != 0 && len(p.Digests) != len(p.Layers)) ||
		p.Length < 0 {
		return nil, false
	}
	var flags byte
	if p.Resolution != nil {
		flags |= preparedResolution
	}
	if p.FileDigest != "" {
		flags |= preparedFileDigest
	}
	if len(p.Digests) > 0 {
		flags |= preparedDigests
	}
	if p.Length != 0 {
		flags |= preparedLength
	}
	b = append(b, binaryMagic, kindUploadPrepared, flags)
	b = append(b, p.UploadID[:]...)
	b = binary.AppendUvarint(b, uint64(p.Owner.Type))
	b = binary.AppendVarint(b, p.Owner.ID)
	b = binary.AppendUvarint(b, uint64(len(p.Layers)))
	var ok bool
	for _, l := range p.Layers {
		if b, ok = appendHash(b, l); !ok {
			return nil, false
		}
	}
	b = binary.AppendUvarint(b, uint64(len(p.Timestamps)))
	var prev int64
	for _, ts := range p.Timestamps {
		b = binary.AppendVarint(b, ts-prev) // log timestamps grow slowly: small deltas
		prev = ts
	}
	b = binary.AppendVarint(b, p.BaseDepth)
	b = binary.AppendUvarint(b, uint64(len(p.Changes)))
	for _, c := range p.Changes {
		b = binary.AppendVarint(b, c.ObjectID)
		b = binary.AppendUvarint(b, c.FromRevision)
		b = binary.AppendVarint(b, int64(c.Events))
	}
	b = append(b, p.Instance[:]...)
	b = appendTime(b, p.At)
	if p.Resolution != nil {
		b = append(b, p.Resolution[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(p.Skipped)))
	for _, s := range p.Skipped {
		b = binary.AppendVarint(b, int64(s.Index))
		b = binary.AppendVarint(b, s.ObjectID)
		dec := byte(0)
		if s.Decrement {
			dec = 1
		}
		b = append(b, dec)
		b = binary.AppendVarint(b, s.Amount)
		b = appendString(b, s.Reason)
		b = appendString(b, s.Message)
	}
	for _, d := range p.Digests {
		if b, ok = appendHash(b, d); !ok {
			return nil, false
		}
	}
	if p.FileDigest != "" {
		if b, ok = appendHash(b, p.FileDigest); !ok {
			return nil, false
		}
	}
	if p.Length != 0 {
		b = binary.AppendUvarint(b, uint64(p.Length))
	}
	return b, true
}

// decodeUploadPrepared reads the binary form into p, and the raw hashes into h if not nil.
// The hex strings of Layers (and of Digests) share one allocation: a replay decodes millions.
func decodeUploadPrepared(data []byte, p *UploadPrepared, h *PreparedHashes) error {
	r := binReader{b: data}
	r.header(kindUploadPrepared)
	flags := r.byte()
	var rawLayers, rawDigests *[][32]byte // where the raw hashes go, if wanted
	if h != nil {
		rawLayers, rawDigests = &h.Layers, &h.Digests
	}
	p.UploadID = r.uuid()
	p.Owner.Type = OwnerType(r.uvarint())
	p.Owner.ID = r.varint()
	if n := r.count(32); n > 0 {
		p.Layers = r.hashes(n, rawLayers)
	}
	if n := r.count(1); n > 0 {
		p.Timestamps = make([]int64, n)
		var prev int64
		for i := range p.Timestamps {
			prev += r.varint()
			p.Timestamps[i] = prev
		}
	}
	p.BaseDepth = r.varint()
	if n := r.count(3); n > 0 {
		p.Changes = make([]PlannedStep, n)
	}
	for i := range p.Changes {
		p.Changes[i] = PlannedStep{ObjectID: r.varint(), FromRevision: r.uvarint(), Events: int(r.varint())}
	}
	p.Instance = r.uuid()
	p.At = r.time()
	if flags&preparedResolution != 0 {
		id := r.uuid()
		p.Resolution = &id
	}
	if n := r.count(5); n > 0 {
		p.Skipped = make([]SkippedEntry, n)
		for i := range p.Skipped {
			s := &p.Skipped[i]
			s.Index, s.ObjectID = int(r.varint()), r.varint()
			s.Decrement = r.byte() == 1
			s.Amount = r.varint()
			s.Reason, s.Message = r.string(), r.string()
		}
	}
	if flags&preparedDigests != 0 {
		if len(p.Layers) == 0 { // the encoder sets the flag only over digests it wrote
			r.fail(errors.New("digests flag on an upload without layers"))
		}
		p.Digests = r.hashes(len(p.Layers), rawDigests)
	}
	if flags&preparedFileDigest != 0 {
		p.FileDigest = r.hash()
		if h != nil && r.err == nil {
			h.FileDigest, h.HasFileDigest = [32]byte(r.b[r.i-32:r.i]), true
		}
	}
	if flags&preparedLength != 0 {
		p.Length = int64(r.uvarint())
	}
	return r.done()
}

func appendUploadCommitted(b []byte, c *UploadCommitted) []byte {
	b = append(b, binaryMagic, kindUploadCommitted)
	b = append(b, c.UploadID[:]...)
	return appendTime(b, c.At)
}

// appendHash writes a 64-digit lowercase hex identity or digest as its 32 bytes.
func appendHash(b []byte, h string) ([]byte, bool) {
	if len(h) != 64 {
		return nil, false
	}
	var raw [32]byte
	if _, err := hex.Decode(raw[:], []byte(h)); err != nil {
		return nil, false
	}
	for i := 0; i < len(h); i++ {
		if h[i] >= 'A' && h[i] <= 'F' { // would come back lowercase: not exact
			return nil, false
		}
	}
	return append(b, raw[:]...), true
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// binReader reads a binary body. Errors stick; done reports the first.
type binReader struct {
	b   []byte
	i   int
	err error
}

var errTruncated = errors.New("truncated binary event")

func (r *binReader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *binReader) take(n int) []byte {
	if r.err != nil || n < 0 || len(r.b)-r.i < n {
		r.fail(errTruncated)
		return nil
	}
	out := r.b[r.i : r.i+n]
	r.i += n
	return out
}

func (r *binReader) header(kind byte) {
	h := r.take(2)
	if r.err == nil && (h[0] != binaryMagic || h[1] != kind) {
		r.fail(fmt.Errorf("binary event of kind %d, want %d", h[1], kind))
	}
}

func (r *binReader) byte() byte {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *binReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.i:])
	if n <= 0 {
		r.fail(errTruncated)
		return 0
	}
	r.i += n
	return v
}

func (r *binReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b[r.i:])
	if n <= 0 {
		r.fail(errTruncated)
		return 0
	}
	r.i += n
	return v
}

// count reads a length whose elements take at least minBytes each, refusing one the rest of
// the body cannot hold (a corrupt length must not allocate gigabytes).
func (r *binReader) count(minBytes int) int {
	n := r.uvarint()
	if r.err == nil && n > uint64((len(r.b)-r.i)/minBytes) {
		r.fail(errTruncated)
		return 0
	}
	return int(n)
}

func (r *binReader) uuid() uuid.UUID {
	var id uuid.UUID
	copy(id[:], r.take(16))
	return id
}

func (r *binReader) hash() string {
	if b := r.take(32); b != nil {
		return hex.EncodeToString(b)
	}
	return ""
}

// hashes reads n hashes as hex strings cut from one string, and as raw values into *raw when
// raw is not nil.
func (r *binReader) hashes(n int, raw *[][32]byte) []string {
	b := r.take(32 * n)
	if b == nil {
		return nil
	}
	all := hex.EncodeToString(b)
	out := make([]string, n)
	for i := range out {
		out[i] = all[64*i : 64*i+64]
	}
	if raw != nil {
		*raw = make([][32]byte, n)
		for i := range *raw {
			(*raw)[i] = [32]byte(b[32*i : 32*i+32])
		}
	}
	return out
}

func (r *binReader) time() time.Time {
	sec := r.varint()
	nsec := r.uvarint()
	if r.err != nil {
		return time.Time{}
	}
	if nsec >= 1e9 {
		r.fail(errors.New("bad nanoseconds"))
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

func (r *binReader) string() string {
	n := r.count(1)
	return string(r.take(n))
}

func (r *binReader) done() error {
	if r.err == nil && r.i != len(r.b) {
		r.fail(errors.New("trailing bytes after a binary event"))
	}
	return r.err
}

// CompactMetadata encodes the metadata of an upload entry's event as a JSON array,
// ["tokenId","requestId","clientAddr"(,1 for admin)], with the token id (and a request id that
// is a UUID, marked by a leading '=') in 22 characters of base64: about 60 bytes instead of
// 110, on every entry. Metadata.UnmarshalJSON reads it. Metadata the form cannot carry exactly
// is encoded as the JSON object.
func CompactMetadata(m Metadata) ([]byte, error) {
	if strings.HasPrefix(m.RequestID, "=") {
		return json.Marshal(m)
	}
	b := []byte{'[', '"'}
	if m.TokenID != uuid.Nil {
		b = base64.RawURLEncoding.AppendEncode(b, m.TokenID[:])
	}
	b = append(b, '"', ',')
	if id, err := uuid.Parse(m.RequestID); err == nil && id.String() == m.RequestID {
		b = append(b, '"', '=')
		b = base64.RawURLEncoding.AppendEncode(b, id[:])
		b = append(b, '"')
	} else {
		b = appendJSONString(b, m.RequestID)
	}
	b = appendJSONString(append(b, ','), m.ClientAddr)
	if m.Admin {
		b = append(b, ",1"...)
	}
	return append(b, ']'), nil
}

// UnmarshalJSON reads Metadata in the JSON object form or the compact array form
// (CompactMetadata).
func (m *Metadata) UnmarshalJSON(data []byte) error {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '[' {
		type plain Metadata // without this method
		var p plain
		if err := json.Unmarshal(data, &p); err != nil {
			return err
		}
		*m = Metadata(p)
		return nil
	}
	s := arrayScanner{b: data[i:], i: 1}
	*m = Metadata{}
	if tok := s.string(); tok != "" && s.err == nil {
		if n, err := base64.RawURLEncoding.Decode(m.TokenID[:], []byte(tok)); err != nil || n != 16 || len(tok) != 22 {
			s.fail("bad token id")
		}
	}
	m.RequestID = s.string()
	if rest, ok := strings.CutPrefix(m.RequestID, "="); ok && s.err == nil {
		var id uuid.UUID
		if n, err := base64.RawURLEncoding.Decode(id[:], []byte(rest)); err != nil || n != 16 || len(rest) != 22 {
			s.fail("bad request id")
		}
		m.RequestID = id.String()
	}
	m.ClientAddr = s.string()
	if s.more() {
		m.Admin = s.int() == 1
	}
	s.end()
	if s.err != nil {
		return fmt.Errorf("compact metadata: %w", s.err)
	}
	return nil
}

// decodeLegacyValueChanged reads a ValueChanged JSON object exactly as json.Marshal writes it
// (fields in their order, no spaces, strings without escapes), as every such event written
// before the compact encoding is: a replay of an old store then costs no reflection. ok is
// false for anything else, which encoding/json then reads; for what it accepts, the result is
// what encoding/json gives (the time and UUID fields go through the same UnmarshalJSON and
// UnmarshalText methods; FuzzLegacyValueChanged compares the two).
func decodeLegacyValueChanged(b []byte, v *ValueChanged) bool {
	s := objectScanner{b: b}
	*v = ValueChanged{}
	var ok bool
	if !s.lit(`{"objectId":`) {
		return false
	}
	v.ObjectID, ok = s.int()
	if !ok || !s.lit(`,"amount":`) {
		return false
	}
	if v.Amount, ok = s.int(); !ok || !s.lit(`,"before":`) {
		return false
	}
	if v.Before, ok = s.int32(); !ok || !s.lit(`,"after":`) {
		return false
	}
	if v.After, ok = s.int32(); !ok || !s.lit(`,"at":`) || !s.time(&v.At) {
		return false
	}
	if s.lit(`,"upload":{"uploadId":`) {
		u := &UploadSource{}
		if !s.uuid(&u.UploadID) || !s.lit(`,"layer":`) {
			return false
		}
		if u.Layer, ok = s.string(); !ok || !s.lit(`,"logTimestamp":`) || !s.time(&u.LogTimestamp) {
			return false
		}
		if s.lit(`,"anomaly":`) {
			if u.Anomaly, ok = s.string(); !ok {
				return false
			}
		}
		if s.lit(`,"entry":`) {
			n, ok := s.int()
			if !ok || int64(int(n)) != n {
				return false
			}
			u.Entry = int(n)
		}
		if !s.lit(`}`) {
			return false
		}
		v.Upload = u
	}
	if s.lit(`,"correction":`) {
		if v.Correction, ok = s.string(); !ok {
			return false
		}
	}
	return s.lit(`}`) && s.i == len(s.b)
}

// objectScanner reads the JSON decodeLegacyValueChanged accepts.
type objectScanner struct {
	b []byte
	i int
}

// lit consumes lit if the input continues with it.
func (s *objectScanner) lit(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// int reads an integer as JSON writes it: an optional minus, no leading zero.
func (s *objectScanner) int() (int64, bool) {
	start := s.i
	neg := s.i < len(s.b) && s.b[s.i] == '-'
	if neg {
		s.i++
	}
	digits := s.i
	var n uint64
	for ; s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9'; s.i++ {
		if n > (math.MaxUint64-9)/10 {
			return 0, false
		}
		n = n*10 + uint64(s.b[s.i]-'0')
	}
	switch {
	case s.i == digits, s.i-digits > 1 && s.b[digits] == '0':
		s.i = start
		return 0, false
	case neg && n <= 1<<63:
		return int64(-n), true
	case !neg && n < 1<<63:
		return int64(n), true
	}
	return 0, false
}

func (s *objectScanner) int32() (int32, bool) {
	n, ok := s.int()
	return int32(n), ok && int64(int32(n)) == n
}

// quoted returns the bytes of a string without escapes or control characters, in valid UTF-8
// (encoding/json would replace invalid bytes), quotes excluded.
func (s *objectScanner) quoted() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	for j := s.i + 1; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			str := s.b[s.i+1 : j]
			if !utf8.Valid(str) {
				return nil, false
			}
			s.i = j + 1
			return str, true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

func (s *objectScanner) string() (string, bool) {
	b, ok := s.quoted()
	return string(b), ok
}

func (s *objectScanner) time(t *time.Time) bool {
	start := s.i
	if _, ok := s.quoted(); !ok {
		return false
	}
	return t.UnmarshalJSON(s.b[start:s.i]) == nil
}

func (s *objectScanner) uuid(id *uuid.UUID) bool {
	b, ok := s.quoted()
	return ok && id.UnmarshalText(b) == nil
}
