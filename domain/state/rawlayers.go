package state

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"sort"
	"strings"
)

// RawLayer is one applied layer in the form the layer set keeps it: the identity and digests
// as raw bytes where they are 64 lowercase hex digits, as text where not. A replay's writer
// takes these (FreshLayersRaw) instead of LayerRecords, so that it neither formats nor parses
// two or three hex strings per layer.
type RawLayer struct {
	Owner string
	// ID is the raw identity, unless TextID is set: the identity when it is not 64 lowercase
	// hex digits.
	ID     [32]byte
	TextID string
	IsText bool

	Depth, Timestamp, Length int64
	// Digest and FileDigest hold the digests when DigestRaw and FileDigestRaw say so; else
	// DigestText and FileDigestText hold them as they came ("" for none).
	Digest, FileDigest         [32]byte
	DigestRaw, FileDigestRaw   bool
	DigestText, FileDigestText string
	Skipped                    string
}

// IDString is the identity as LayerRecord.ID has it.
func (l *RawLayer) IDString() string {
	if l.IsText {
		return l.TextID
	}
	return hex.EncodeToString(l.ID[:])
}

// Info is the layer's LayerInfo, as Changes lists it.
func (l *RawLayer) Info() LayerInfo {
	info := LayerInfo{Depth: l.Depth, Timestamp: l.Timestamp, Length: l.Length, Skipped: l.Skipped, Digest: l.DigestText, FileDigest: l.FileDigestText}
	if l.DigestRaw {
		info.Digest = hex.EncodeToString(l.Digest[:])
	}
	if l.FileDigestRaw {
		info.FileDigest = hex.EncodeToString(l.FileDigest[:])
	}
	return info
}

// CompareRawLayers orders raw layers as Changes orders its LayerRecords: by owner, then by
// identity as a string (for two raw identities, their bytes give that order).
func CompareRawLayers(a, b *RawLayer) int {
	if c := strings.Compare(a.Owner, b.Owner); c != 0 {
		return c
	}
	return CompareRawID(a, b.IsText, &b.ID, b.TextID)
}

// CompareRawID compares l's identity with one given as raw bytes (text false) or as text, in
// the order of their strings.
func CompareRawID(l *RawLayer, text bool, id *[32]byte, textID string) int {
	if !l.IsText && !text {
		return bytes.Compare(l.ID[:], id[:])
	}
	a, b := l.TextID, textID
	if !l.IsText {
		a = hex.EncodeToString(l.ID[:])
	}
	if !text {
		b = hex.EncodeToString(id[:])
	}
	return strings.Compare(a, b)
}

// AppendFreshLayersRaw appends to dst what Changes(false).Layers lists (the layers applied
// since the last checkpoint, in key order) as RawLayers. Only a replay uses it, with the
// buffer of a batch it has written (a checkpoint keeps Changes). The caller must keep Apply
// away while it runs.
func (s *State) AppendFreshLayersRaw(dst []RawLayer) []RawLayer {
	owners := make([]string, 0, len(s.layers.fresh))
	for owner := range s.layers.fresh {
		owners = append(owners, owner)
	}
	sort.Strings(owners)
	out := slices.Grow(dst, s.LayersInMemory())
	for _, owner := range owners {
		out = s.layers.fresh[owner].appendRaw(out, owner)
	}
	return out
}

// rawOrder is an entry's place in the sort of appendRaw: the identity's first eight bytes as a
// big-endian number (which orders as the bytes do), and the entry's index. Sorting these
// instead of RawLayers moves 16 bytes per swap instead of two hundred.
type rawOrder struct {
	hi uint64
	i  int
}

// appendRaw appends every layer of ol as a RawLayer of owner, in the order of their identities
// as strings.
func (ol *ownerLayers) appendRaw(dst []RawLayer, owner string) []RawLayer {
	order := make([]rawOrder, ol.entries.n)
	for i := range order {
		order[i] = rawOrder{hi: binary.BigEndian.Uint64(ol.entries.at(i).id[:8]), i: i}
	}
	slices.SortFunc(order, func(a, b rawOrder) int {
		if c := cmp.Compare(a.hi, b.hi); c != 0 {
			return c
		}
		return bytes.Compare(ol.entries.at(a.i).id[:], ol.entries.at(b.i).id[:])
	})
	text := make([]RawLayer, 0, len(ol.odd))
	for id, info := range ol.odd {
		l := RawLayer{Owner: owner, TextID: id, IsText: true, Depth: info.Depth, Timestamp: info.Timestamp, Length: info.Length, Skipped: info.Skipped}
		if d, ok := ParseHash(info.Digest); ok {
			l.Digest, l.DigestRaw = d, true
		} else {
			l.DigestText = info.Digest
		}
		if d, ok := ParseHash(info.FileDigest); ok {
			l.FileDigest, l.FileDigestRaw = d, true
		} else {
			l.FileDigestText = info.FileDigest
		}
		text = append(text, l)
	}
	slices.SortFunc(text, func(a, b RawLayer) int { return strings.Compare(a.TextID, b.TextID) })
	for _, o := range order {
		e := ol.entries.at(o.i)
		// The text identities that sort before this one first.
		for len(text) > 0 && CompareRawID(&text[0], false, &e.id, "") < 0 {
			dst, text = append(dst, text[0]), text[1:]
		}
		l := RawLayer{Owner: owner, ID: e.id, Depth: e.rec.depth, Timestamp: e.rec.timestamp, Length: e.rec.length}
		if e.rec.flags&recDigest != 0 {
			l.Digest, l.DigestRaw = e.rec.digest, true
		}
		if e.rec.flags&recFileDigest != 0 {
			l.FileDigest, l.FileDigestRaw = ol.fileDigests[e.id], true
		}
		if e.rec.flags&recRare != 0 {
			r := ol.rare[e.id]
			l.Skipped = r.skipped
			if r.digest != "" {
				l.Digest, l.DigestRaw, l.DigestText = [32]byte{}, false, r.digest
			}
			if r.fileDigest != "" {
				l.FileDigest, l.FileDigestRaw, l.FileDigestText = [32]byte{}, false, r.fileDigest
			}
		}
		dst = append(dst, l)
	}
	return append(dst, text...)
}
