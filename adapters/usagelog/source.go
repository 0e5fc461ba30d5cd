package usagelog

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
)

// source is random access to the bytes of one level of a log: the raw file, or the plaintext of
// one layer's EncryptedObject. bytes returns a fresh slice that the caller owns; callers keep
// off and n inside [0, size()).
type source interface {
	size() int
	bytes(off, n int) ([]byte, error)
}

// plainSource is bytes already in memory.
type plainSource []byte

func (p plainSource) size() int { return len(p) }

func (p plainSource) bytes(off, n int) ([]byte, error) {
	if off < 0 || n < 0 || off+n > len(p) {
		return nil, fmt.Errorf("%w: read [%d,+%d) outside %d bytes", ErrCorrupted, off, n, len(p))
	}
	return append([]byte(nil), p[off:off+n]...), nil
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
		v := &cbcView{parent: parent, base: off, n: n, block: block, work: w, head: run{}, tail: run{start: n, end: n}}
		copy(v.iv[:], iv)
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
	block  cipher.Block
	work   *work // nil, or where to count
	head   run   // advances forward from 0
	tail   run   // advances backward from n
}

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
		drop := (len(plain) - runKeep) / aes.BlockSize * aes.BlockSize
		plain, start = append(make([]byte, 0, 3*runKeep), plain[drop:]...), start+drop
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
	if off < 0 || n < 0 || off+n > v.n {
		return nil, fmt.Errorf("%w: read [%d,+%d) outside %d bytes", ErrCorrupted, off, n, v.n)
	}
	if n == 0 {
		return []byte{}, nil
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
			return nil, err
		}
		v.head = v.head.extendForward(fresh)
		r = v.head
	case end <= v.tail.end && hi >= v.tail.start: // extend the tail run backward
		fresh, err := v.decrypt(lo, v.tail.start)
		if err != nil {
			return nil, err
		}
		v.tail = v.tail.extendBackward(fresh)
		r = v.tail
	default:
		if v.work != nil {
			v.work.directReads++
		}
		plain, err := v.decrypt(lo, hi)
		if err != nil {
			return nil, err
		}
		r = run{start: lo, end: hi, plain: plain}
	}
	return append([]byte(nil), r.plain[off-r.start:end-r.start]...), nil
}

// decrypt returns the plaintext of the block-aligned range [lo, hi).
func (v *cbcView) decrypt(lo, hi int) ([]byte, error) {
	const bs = aes.BlockSize
	if lo >= hi {
		return []byte{}, nil
	}
	var iv, ct []byte
	if lo == 0 {
		buf, err := v.parent.bytes(v.base, hi)
		if err != nil {
			return nil, err
		}
		iv, ct = v.iv[:], buf
	} else {
		// The ciphertext block before lo is the CBC chaining value.
		buf, err := v.parent.bytes(v.base+lo-bs, hi-lo+bs)
		if err != nil {
			return nil, err
		}
		iv, ct = buf[:bs], buf[bs:]
	}
	if v.work != nil {
		v.work.decryptedBytes += len(ct)
	}
	cipher.NewCBCDecrypter(v.block, iv).CryptBlocks(ct, ct)
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
