package usagelog

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"slices"

	"github.com/tallyledger/tally/adapters/usagelog/internal/cbc"
)

// source is random access to the bytes of one level of a log: the raw file, or the plaintext of
// one layer's EncryptedObject. bytes returns a fresh slice that the caller owns; a range outside
// [0, size()) is ErrCorrupted.
type source interface {
	size() int
	bytes(off, n int) ([]byte, error)
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

// openLazy returns the fast path's view of a layer's plaintext, which decrypts only the bytes a
// walk reads, in bulk (see chain).
func openLazy(parent source, off, n int, iv, key []byte) (source, error) {
	return openLazyCounting(nil)(parent, off, n, iv, key)
}

// openLazyCounting is openLazy counting its work in w (nil: not counted).
func openLazyCounting(w *work) opener { return openLazyTuned(w, headChunk, tailChunk) }

// openLazyTuned is openLazyCounting with the given read-ahead; tests use tiny values so that
// short logs take every path of the chain many times.
func openLazyTuned(w *work, headAhead, tailAhead int) opener {
	return func(parent source, off, n int, iv, key []byte) (source, error) {
		if off < 0 || n <= 0 || n%aes.BlockSize != 0 || off > parent.size()-n || len(iv) != aes.BlockSize {
			return nil, fmt.Errorf("%w: EncryptedObject [%d,+%d) in %d bytes", ErrCorrupted, off, n, parent.size())
		}
		block, err := cbc.NewBlock(key)
		if err != nil {
			return nil, fmt.Errorf("aes key: %w", err)
		}
		var c *chain
		switch p := parent.(type) {
		case plainSource: // the raw log: a new chain reads through it
			c = newChain(p, w, headAhead, tailAhead)
		case *chainView:
			// A walk opens a layer from the view of the layer around it, the chain's tip, or,
			// trying another key, from the tip's parent (continueFrom pops the failed level).
			if !p.c.continueFrom(p.lv, off) {
				return nil, w.refuse("a layer opened from a level the chain has moved past")
			}
			c = p.c
		default:
			return nil, fmt.Errorf("usage-log fast path: a layer opened from a %T", parent)
		}
		lv, err := c.push(off, n, iv, block)
		if err != nil {
			return nil, err
		}
		return &chainView{c: c, lv: lv}, nil
	}
}

// Read-ahead of the two frontiers of a chain, in bytes of the innermost level.
const (
	// headChunk: a head extension reaches this far beyond the read that caused it, so that
	// one extension (one CryptBlocks call per level) serves the headers of some 25 layers.
	headChunk = 8 << 10
	// tailChunk: the same for the tail, whose frontier moves about 31 bytes per layer.
	tailChunk = 2 << 10
)

// chain holds the plaintext of nested layers (levels) as a walk needs it, decrypted in bulk.
//
// Positions are shared: byte x of a level's plaintext is byte start+x of the base (the raw
// log), and a level's plaintext at position p is decrypted from its parent's plaintext at
// positions p-16..p+15, because the level's ciphertext is a range of its parent's plaintext.
// A walk reads each layer's header at its start and its padding at its end; all the headers of
// the new layers lie in one contiguous prefix of the log and all the paddings in one suffix.
// So the chain keeps two buffers in base positions, each decrypted IN PLACE level after level:
//
//   - the head buffer, from the innermost level's start forward: each level's plaintext is
//     decrypted up to its head frontier (headEnd), which lags its parent's by less than one
//     block. Extending it decrypts the new range of every level with one CryptBlocks call,
//     outermost first, each continuing from its parent's freshly decrypted bytes (the CBC
//     decrypter keeps the chaining block). A byte at position p holds the plaintext of the
//     deepest level whose [start, headEnd) contains p.
//   - the tail buffer, from the base's end backward: each level is decrypted down to its
//     tail frontier (tailStart), at least one block above its parent's so that the chaining
//     block is at hand; extending it works the same way, downward.
//
// A new level (push) is decrypted over the range its parent already holds, from the buffers.
// Decoding k new layers thus decrypts about 150 × k² bytes for the heads (every header through
// every layer around it, which no CBC decryption avoids) and 15 × k² for the paddings, plus the
// read-ahead, in O(k²/chunk) large calls instead of O(k²) small ones; how much lies below the
// new layers does not matter beyond the read-ahead. Memory: the head buffer holds the innermost
// level from its start to the read-ahead (≲ headChunk + 16 × k + a header), the tail buffer
// the suffix of the paddings (≲ tailChunk + 47 × k), and each level its AES key schedule and two
// CBC decrypters; a whole decode of 1000 new layers allocates about 1.7 MB, with or without
// a long history below them (BenchmarkDecodePerLayer and BenchmarkLongHistory with -benchmem;
// docs/usage-log.md).
//
// Only the innermost level (the tip) is read, from the buffers: a walk reads each layer's
// headers and padding before it pushes the layer nested in it. Any other read (an outer level,
// a view the chain has moved past) is an internal error, which no walk makes (counted in
// work.refused, which tests check).
type chain struct {
	base      plainSource
	levels    []*level // levels[0] is the base; each next level is nested in the one before
	work      *work
	headAhead int // read-ahead: headChunk outside tests
	tailAhead int // tailChunk outside tests

	hoff int    // hbuf holds base positions [hoff, hoff+len(hbuf))
	hbuf []byte // the head buffer
	toff int    // tbuf holds base positions [toff, base.size())
	tbuf []byte // the tail buffer
}

// level is one layer's plaintext in a chain (or the base itself, whose block is nil).
type level struct {
	parent     *level
	start, end int // base positions of the plaintext (= of the ciphertext in the parent)
	iv         [aes.BlockSize]byte
	block      *cbc.Block     // the layer's key (the pipelined decrypter, see package cbc)
	head       *cbc.Decrypter // CBC decrypter whose chaining value is the block before headEnd
	tail       *cbc.Decrypter // CBC decrypter, re-aimed with SetIV
	headEnd    int            // decrypted in the head buffer over [start, headEnd)
	tailStart  int            // decrypted in the tail buffer over [tailStart, end)
}

// work counts what the fast path does, for tests that bound it.
type work struct {
	decryptedBytes int // AES-CBC blocks processed, in bytes, at every level
	pops           int // levels popped because their key failed
	refused        int // reads and opens the chain cannot serve (see chain): a walk makes none
}

// refuse counts and returns an internal error of the fast path: a read or open no walk makes.
func (w *work) refuse(format string, args ...any) error {
	if w != nil {
		w.refused++
	}
	return fmt.Errorf("usage-log fast path: "+format, args...)
}

func (w *work) add(n int) {
	if w != nil {
		w.decryptedBytes += n
	}
}

func newChain(base plainSource, w *work, headAhead, tailAhead int) *chain {
	n := base.size()
	return &chain{
		base:      base,
		levels:    []*level{{start: 0, end: n, headEnd: 0, tailStart: n}},
		work:      w,
		headAhead: headAhead,
		tailAhead: tailAhead,
		toff:      n,
	}
}

func (c *chain) tip() *level { return c.levels[len(c.levels)-1] }

// continueFrom reports whether a layer nested at offset off of lv's plaintext can be pushed on
// this chain. A walk trying another key for the layer just pushed asks again from that layer's
// parent: the failed level is popped first.
func (c *chain) continueFrom(lv *level, off int) bool {
	if len(c.levels) >= 2 && c.levels[len(c.levels)-2] == lv {
		c.pop()
	}
	return c.tip() == lv && lv.start+off >= c.hoff
}

// push adds the layer whose ciphertext lies at [off, off+n) of the tip's plaintext and decrypts
// it over what its parent holds in both buffers.
func (c *chain) push(off, n int, iv []byte, block *cbc.Block) (*level, error) {
	parent := c.tip()
	lv := &level{parent: parent, start: parent.start + off, end: parent.start + off + n, block: block}
	copy(lv.iv[:], iv)
	lv.head = block.NewCBCDecrypter(lv.iv[:])
	lv.tail = block.NewCBCDecrypter(lv.iv[:])
	if parent.headEnd < lv.start {
		if err := c.extendHead(lv.start); err != nil {
			return nil, err
		}
	}
	lv.headEnd, lv.tailStart = lv.start, lv.end
	c.levels = append(c.levels, lv)
	c.advanceHead(lv)
	c.lowerTail(lv)
	return lv, nil
}

// pop removes the tip, re-encrypting its ranges of both buffers so that they hold its parent's
// plaintext again (a walk pops only a level whose key failed, a few hundred bytes).
func (c *chain) pop() {
	lv := c.tip()
	if c.work != nil {
		c.work.pops++
	}
	if lv.headEnd > lv.start {
		b := c.hbuf[lv.start-c.hoff : lv.headEnd-c.hoff]
		lv.block.NewCBCEncrypter(lv.iv[:]).CryptBlocks(b, b)
		c.work.add(len(b))
	}
	if lv.tailStart < lv.end {
		iv := lv.iv[:]
		if lv.tailStart > lv.start {
			iv = c.tbuf[lv.tailStart-aes.BlockSize-c.toff : lv.tailStart-c.toff]
		}
		b := c.tbuf[lv.tailStart-c.toff : lv.end-c.toff]
		lv.block.NewCBCEncrypter(iv).CryptBlocks(b, b)
		c.work.add(len(b))
	}
	c.levels = c.levels[:len(c.levels)-1]
}

// advanceHead decrypts lv forward as far as its parent's head frontier allows.
func (c *chain) advanceHead(lv *level) {
	limit := min(lv.parent.headEnd, lv.end)
	if limit-lv.headEnd < aes.BlockSize {
		return
	}
	end := lv.headEnd + (limit-lv.headEnd)/aes.BlockSize*aes.BlockSize
	b := c.hbuf[lv.headEnd-c.hoff : end-c.hoff]
	lv.head.CryptBlocks(b, b)
	c.work.add(len(b))
	lv.headEnd = end
}

// lowerTail decrypts lv backward as far as its parent's tail frontier allows: down to the
// first block of lv whose chaining block its parent holds (or lv's start, chained to its IV).
func (c *chain) lowerTail(lv *level) {
	const bs = aes.BlockSize
	from := lv.start
	if ps := lv.parent.tailStart; ps > lv.start {
		from = lv.start + (ps+bs-lv.start+bs-1)/bs*bs
	}
	if from >= lv.tailStart {
		return
	}
	if from == lv.start {
		lv.tail.SetIV(lv.iv[:])
	} else {
		lv.tail.SetIV(c.tbuf[from-bs-c.toff : from-c.toff])
	}
	b := c.tbuf[from-c.toff : lv.tailStart-c.toff]
	lv.tail.CryptBlocks(b, b)
	c.work.add(len(b))
	lv.tailStart = from
}

// extendHead moves the head frontiers so that the tip's reaches at least target (and up to
// the read-ahead beyond): it works out, from the tip outward, how far each level must reach, reads
// the base's new bytes once, and decrypts each level's new range in one call.
func (c *chain) extendHead(target int) error {
	const bs = aes.BlockSize
	tip := c.tip()
	want := min(target+c.headAhead, tip.end)
	for i := len(c.levels) - 1; i >= 1; i-- {
		lv := c.levels[i]
		// lv reaches want once its parent holds the whole block that ends there.
		want = lv.start + (max(want, lv.headEnd)-lv.start+bs-1)/bs*bs
	}
	base := c.levels[0]
	if want > base.headEnd {
		// Nothing reads before the tip's start any more.
		if drop := tip.start - c.hoff; drop > 0 {
			c.hbuf = c.hbuf[:copy(c.hbuf, c.hbuf[drop:])]
			c.hoff = tip.start
		}
		old := len(c.hbuf)
		c.hbuf = slices.Grow(c.hbuf, want-base.headEnd)[:old+want-base.headEnd]
		if err := c.base.readAt(c.hbuf[old:], base.headEnd); err != nil {
			return err
		}
		base.headEnd = want
	}
	for _, lv := range c.levels[1:] {
		c.advanceHead(lv)
	}
	return nil
}

// extendTail moves the tail frontiers so that the tip's is at most target (and up to the read-ahead
// below), the mirror of extendHead.
func (c *chain) extendTail(target int) error {
	const bs = aes.BlockSize
	tip := c.tip()
	want := tip.start + (max(target-c.tailAhead, tip.start)-tip.start)/bs*bs
	for i := len(c.levels) - 1; i >= 1; i-- {
		lv := c.levels[i]
		want = min(want, lv.tailStart)
		// lv starts at want once its parent holds the chaining block before it (at its
		// start, the IV: the parent need only hold the start).
		if want > lv.start {
			want -= bs
		}
		if p := lv.parent; p.parent != nil {
			want = p.start + (want-p.start)/bs*bs
		}
	}
	base := c.levels[0]
	if want < base.tailStart {
		fresh := base.tailStart - want
		grown := make([]byte, fresh+len(c.tbuf))
		if err := c.base.readAt(grown[:fresh], want); err != nil {
			return err
		}
		copy(grown[fresh:], c.tbuf)
		c.tbuf, c.toff, base.tailStart = grown, want, want
	}
	for _, lv := range c.levels[1:] {
		c.lowerTail(lv)
	}
	return nil
}

// read fills dst with lv's plaintext from base position x; lv must be the tip.
func (c *chain) read(lv *level, dst []byte, x int) error {
	if lv != c.tip() {
		return c.work.refuse("read of a level other than the chain's tip")
	}
	y := x + len(dst)
	inHead := func() bool { return x >= c.hoff && y <= lv.headEnd }
	inTail := func() bool { return x >= lv.tailStart }
	switch {
	case inHead():
	case inTail():
	case x >= c.hoff && x <= lv.headEnd: // a header, read from the head frontier on
		if err := c.extendHead(y); err != nil {
			return err
		}
	default: // a padding, read near the end
		if err := c.extendTail(x); err != nil {
			return err
		}
	}
	switch {
	case inHead():
		copy(dst, c.hbuf[x-c.hoff:])
		return nil
	case inTail():
		copy(dst, c.tbuf[x-c.toff:])
		return nil
	}
	return c.work.refuse("read of [%d,%d) outside the chain's buffers", x, y)
}

// chainView is one level of a chain as a source.
type chainView struct {
	c  *chain
	lv *level
}

func (v *chainView) size() int { return v.lv.end - v.lv.start }

func (v *chainView) bytes(off, n int) ([]byte, error) {
	if off < 0 || n < 0 || off > v.size()-n {
		return nil, fmt.Errorf("%w: read [%d,+%d) outside %d bytes", ErrCorrupted, off, n, v.size())
	}
	b := make([]byte, n)
	if n == 0 {
		return b, nil
	}
	return b, v.c.read(v.lv, b, v.lv.start+off)
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
