package usagelog

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
)

// source is random access to the bytes of one level of a log: the raw file, or the plaintext of
// one layer's EncryptedObject. bytes returns a fresh slice that the caller owns; readAt fills
// dst instead, so that the nested views of a walk read through one another without allocating.
// Callers keep the range inside [0, size()).
type source interface {
	size() int
	bytes(off, n int) ([]byte, error)
	readAt(dst []byte, off int) error
}

// plainSource is bytes already in memory.
type plainSource []byte

func (p plainSource) size() int { return len(p) }

func (p plainSource) bytes(off, n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: read [%d,+%d) outside %d bytes", ErrCorrupted, off, n, len(p))
	}
	b := make([]byte, n)
	return b, p.readAt(b, off)
}

func (p plainSource) readAt(dst []byte, off int) error {
	if off < 0 || off+len(dst) > len(p) {
		return fmt.Errorf("%w: read [%d,+%d) outside %d bytes", ErrCorrupted, off, len(dst), len(p))
	}
	copy(dst, p[off:])
	return nil
}

// opener makes the plaintext source of an EncryptedObject that lies at [off, off+n) of parent.
type opener func(parent source, off, n int, iv, key []byte) (source, error)

// openFull decrypts the whole EncryptedObject at once: the straightforward way, whose cost per
// layer is the size of everything the layer nests. Kept as the reference the fast path is
// checked against (tests) and measured against (benchmarks).
func openFull(parent source, off, n int, iv, key []byte) (source, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes key: %w", err)
	}
	ct, err := parent.bytes(off, n)
	if err != nil {
		return nil, err
	}
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(ct, ct)
	return plainSource(ct), nil
}

// openLazy returns a view that decrypts only the blocks it is asked for. CBC lets any block be
// decrypted from itself and its predecessor, so reading a layer's header costs a few blocks at
// each level above it instead of the whole nested history.
func openLazy(parent source, off, n int, iv, key []byte) (source, error) {
	return openLazyCounting(nil)(parent, off, n, iv, key)
}

// openLazyCounting is openLazy counting its work in w (nil: not counted).
func openLazyCounting(w *work) opener {
	return func(parent source, off, n int, iv, key []byte) (source, error) {
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("aes key: %w", err)
		}
		v := &cbcView{parent: parent, base: off, n: n, work: w, head: run{}, tail: run{start: n, end: n}}
		copy(v.iv[:], iv)
		// One decrypter per view, re-aimed with SetIV for each range: making one per range
		// copies the expanded key each time, which profiles showed costing more than the AES.
		v.mode = cipher.NewCBCDecrypter(block, v.iv[:])
		if _, ok := v.mode.(ivSetter); !ok {
			return nil, fmt.Errorf("aes: the CBC decrypter cannot be re-aimed")
		}
		return v, nil
	}
}

// cbcView is the plaintext of an AES-CBC ciphertext lying at [base, base+n) of parent,
// decrypted on demand.
//
// Reading a layer at depth d means decrypting through all d layers around it, and each level
// would widen the byte range it asks of its parent by up to two blocks (the chaining block and
// misalignment), so plain reads would cost O(d²) blocks. Instead each view keeps two runs of
// decrypted blocks, one moving forward from the start and one moving backward from the end,
// because that is how a walk reads: headers at the start of each layer (and of the layer it
// nests, a little further on), padding at the end. A read next to a run extends it and only the
// new blocks are decrypted, so each level decrypts about as many bytes as its run advances,
// which is the size of the deeper layers' headers: decoding k new layers costs O(k² × header),
// whatever the size of the history below them. Runs keep only the blocks of the latest read, so
// memory stays O(k × header) too. Any other read is served directly, uncached (correct, slower;
// the walk does not make such reads).
type cbcView struct {
	parent source
	base   int
	n      int
	iv     [aes.BlockSize]byte
	mode   cipher.BlockMode // CBC decrypter, re-aimed with SetIV
	work   *work            // nil, or where to count
	head   run              // advances forward from 0
	tail   run              // advances backward from n
	// scratch holds the ciphertext of the latest decrypt and then its plaintext in place; what
	// decrypt returns is only valid until the next call.
	scratch []byte
}

// ivSetter is implemented by the standard library's CBC decrypters.
type ivSetter interface{ SetIV(iv []byte) }

// run is the plaintext of the block-aligned range [start, end).
type run struct {
	start, end int
	plain      []byte
	backing    []byte // backward runs: plain = backing[at:at+len(plain)]
	at         int
}

func (r run) covers(off, end int) bool { return off >= r.start && end <= r.end }

// runKeep is how much of a run is kept behind its moving edge. Reads that extend a run start a
// little before its edge (the chaining block, misalignment, the overlap between successive
// headers); when a view is nearly consumed its two runs meet and reads meant for one land on
// the other. Keeping at least 2 KiB serves all of these from the cache; a run is compacted
// back to runKeep when it reaches twice that, so memory stays under 4 KiB per level and the
// compaction costs O(1) per byte decrypted.
const runKeep = 2048

// extendForward appends the plaintext of [r.end, r.end+len(fresh)).
func (r run) extendForward(fresh []byte) run {
	plain := append(r.plain, fresh...)
	start := r.start
	if len(plain) > 2*runKeep {
		// Compact in place: only this run holds the array (reads copy out of it).
		drop := (len(plain) - runKeep) / aes.BlockSize * aes.BlockSize
		plain, start = plain[:copy(plain, plain[drop:])], start+drop
	}
	return run{start: start, end: r.end + len(fresh), plain: plain}
}

// extendBackward prepends the plaintext of [r.start-len(fresh), r.start). A backward run keeps
// its bytes at the end of a larger backing array (plain = backing[at:]), so prepending usually
// copies only fresh.
func (r run) extendBackward(fresh []byte) run {
	start := r.start - len(fresh)
	plain := r.plain
	if len(plain) > 2*runKeep {
		plain = plain[:runKeep]
	}
	if r.at >= len(fresh) {
		at := r.at - len(fresh)
		copy(r.backing[at:], fresh)
		plain = r.backing[at : at+len(fresh)+len(plain)]
		return run{start: start, end: start + len(plain), plain: plain, backing: r.backing, at: at}
	}
	if len(plain) > runKeep {
		plain = plain[:runKeep]
	}
	total := len(fresh) + len(plain)
	backing := make([]byte, 2*runKeep+total)
	at := len(backing) - total
	copy(backing[at:], fresh)
	copy(backing[at+len(fresh):], plain)
	return run{start: start, end: start + total, plain: backing[at:], backing: backing, at: at}
}

// work counts what lazy views do, for tests that bound it.
type work struct {
	decryptedBytes int // AES-CBC plaintext produced, at every level
	directReads    int // reads served outside both runs
}

func (v *cbcView) size() int { return v.n }

func (v *cbcView) bytes(off, n int) ([]byte, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: read [%d,+%d) outside %d bytes", ErrCorrupted, off, n, v.n)
	}
	b := make([]byte, n)
	return b, v.readAt(b, off)
}

func (v *cbcView) readAt(dst []byte, off int) error {
	n := len(dst)
	if off < 0 || off+n > v.n {
		return fmt.Errorf("%w: read [%d,+%d) outside %d bytes", ErrCorrupted, off, n, v.n)
	}
	if n == 0 {
		return nil
	}
	const bs = aes.BlockSize
	end := off + n
	lo, hi := off/bs*bs, (end+bs-1)/bs*bs
	var r run
	switch {
	case v.head.covers(off, end):
		r = v.head
	case v.tail.covers(off, end):
		r = v.tail
	case off >= v.head.start && lo <= v.head.end: // extend the head run forward
		fresh, err := v.decrypt(v.head.end, hi)
		if err != nil {
			return err
		}
		v.head = v.head.extendForward(fresh)
		r = v.head
	case end <= v.tail.end && hi >= v.tail.start: // extend the tail run backward
		fresh, err := v.decrypt(lo, v.tail.start)
		if err != nil {
			return err
		}
		v.tail = v.tail.extendBackward(fresh)
		r = v.tail
	default:
		if v.work != nil {
			v.work.directReads++
		}
		plain, err := v.decrypt(lo, hi)
		if err != nil {
			return err
		}
		r = run{start: lo, end: hi, plain: plain}
	}
	copy(dst, r.plain[off-r.start:end-r.start])
	return nil
}

// decrypt returns the plaintext of the block-aligned range [lo, hi), in v.scratch: valid until
// the next call.
func (v *cbcView) decrypt(lo, hi int) ([]byte, error) {
	const bs = aes.BlockSize
	if lo >= hi {
		return []byte{}, nil
	}
	// The ciphertext block before lo is the CBC chaining value; at 0 it is the IV.
	need := hi - lo + bs
	if cap(v.scratch) < need {
		v.scratch = make([]byte, need, max(need, 2*cap(v.scratch)))
	}
	buf := v.scratch[:need]
	if lo == 0 {
		copy(buf, v.iv[:])
		if err := v.parent.readAt(buf[bs:], v.base); err != nil {
			return nil, err
		}
	} else if err := v.parent.readAt(buf, v.base+lo-bs); err != nil {
		return nil, err
	}
	ct := buf[bs:]
	if v.work != nil {
		v.work.decryptedBytes += len(ct)
	}
	v.mode.(ivSetter).SetIV(buf[:bs])
	v.mode.CryptBlocks(ct, ct)
	return ct, nil
}

// window serves reads of a source from one cached run of bytes, fetching ahead so that a
// layer's inner header and the next layer's outer header come from a single read.
type window struct {
	src source
	off int
	buf []byte
}

// readAhead covers an inner header (at most 34 bytes) and an outer header with a 2048-bit
// key (283 bytes) in one read.
const readAhead = 384

func (w *window) get(off, n int) ([]byte, error) {
	if off >= w.off && off+n <= w.off+len(w.buf) {
		return w.buf[off-w.off : off-w.off+n], nil
	}
	size := max(n, readAhead)
	if off+size > w.src.size() {
		size = max(n, w.src.size()-off)
	}
	b, err := w.src.bytes(off, size)
	if err != nil {
		return nil, err
	}
	w.off, w.buf = off, b
	return b[:n], nil
}
