// Package cbc holds an AES-128-CBC decrypter for the usage-log decoder: a drop-in for
// crypto/cipher's CBC decrypter (same CryptBlocks and SetIV behaviour) that on amd64 with
// AES-NI decrypts eight blocks at a time.
//
// It exists because the decoder's fast path must decrypt every new layer's header through
// every layer around it (about 169 × n² bytes of AES-CBC for n new layers, inherent to the log
// format), and Go's standard library decrypts CBC on amd64 one block at a time, so each block
// waits for the full latency of the previous one. CBC decryption is parallel (plaintext block
// i is D(C[i]) xor C[i-1]), so interleaving eight independent blocks keeps the AES unit busy.
// Elsewhere (other architectures, the purego build tag, CPUs without AES-NI) it falls back to
// crypto/aes and crypto/cipher. Encryption, which CBC serialises anyway, is left to the
// standard library (NewCBCEncrypter).
package cbc

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"unsafe"
)

// BlockSize is the AES block size in bytes.
const BlockSize = aes.BlockSize

// KeySize is the only key size supported: AES-128, the size of the usage log's layer keys.
const KeySize = 16

// scheduleSize is the size of an AES-128 round-key schedule: 11 round keys of 16 bytes.
const scheduleSize = 11 * BlockSize

// Block is an AES-128 key prepared for CBC decryption. It is safe for concurrent use; the
// decrypters made from it are not.
type Block struct {
	key [KeySize]byte
	// dec is the decryption key schedule for the assembly kernel, in the order it is used
	// (the last encryption round key first, then the inverse-mixed ones, then the first);
	// unused when std is set.
	dec [scheduleSize]byte
	// std is the standard library's cipher when there is no assembly kernel, else nil.
	std cipher.Block
}

// NewBlock prepares key, which must be 16 bytes (AES-128), for CBC decryption.
func NewBlock(key []byte) (*Block, error) {
	return newBlock(key, haveAsm())
}

// newBlock is NewBlock with the choice of implementation made by the caller, so that tests
// exercise the fallback on machines that have the assembly kernel.
func newBlock(key []byte, useAsm bool) (*Block, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("cbc: key of %d bytes, want %d (AES-128 only)", len(key), KeySize)
	}
	b := &Block{}
	copy(b.key[:], key)
	if useAsm {
		expandKeyDec(&b.key, &b.dec)
		return b, nil
	}
	std, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("cbc: %w", err)
	}
	b.std = std
	return b, nil
}

// NewCBCDecrypter returns a CBC decrypter starting from iv, which must be 16 bytes (it panics
// otherwise, as crypto/cipher.NewCBCDecrypter does).
func (b *Block) NewCBCDecrypter(iv []byte) *Decrypter {
	if len(iv) != BlockSize {
		panic("cipher.NewCBCDecrypter: IV length must equal block size")
	}
	d := &Decrypter{b: b}
	copy(d.iv[:], iv)
	if b.std != nil {
		d.std = cipher.NewCBCDecrypter(b.std, iv).(ivSetterMode)
	}
	return d
}

// NewCBCEncrypter returns the standard library's CBC encrypter for the same key, starting from
// iv (16 bytes, else it panics). CBC encryption is serial, so there is nothing to gain here;
// the cipher is built on each call, which suits rare use.
func (b *Block) NewCBCEncrypter(iv []byte) cipher.BlockMode {
	std := b.std
	if std == nil {
		var err error
		if std, err = aes.NewCipher(b.key[:]); err != nil {
			panic(fmt.Sprintf("cbc: a 16-byte key refused: %v", err)) // cannot happen: NewBlock checked the size
		}
	}
	return cipher.NewCBCEncrypter(std, iv)
}

// ivSetterMode is what crypto/cipher's CBC decrypter provides.
type ivSetterMode interface {
	cipher.BlockMode
	SetIV(iv []byte)
}

// Decrypter decrypts a CBC stream: a cipher.BlockMode whose chaining value carries across
// CryptBlocks calls and can be re-aimed with SetIV.
type Decrypter struct {
	b   *Block
	iv  [BlockSize]byte // the chaining value: the last ciphertext block seen (assembly path)
	std ivSetterMode    // the standard library's decrypter (fallback path)
}

var _ cipher.BlockMode = (*Decrypter)(nil)

// BlockSize returns 16.
func (d *Decrypter) BlockSize() int { return BlockSize }

// CryptBlocks decrypts src into dst, continuing from the chaining value. As with crypto/cipher:
// len(src) must be a multiple of 16 and dst at least as long, and dst and src must be the same
// or not overlap at all; it panics otherwise.
func (d *Decrypter) CryptBlocks(dst, src []byte) {
	if d.std != nil {
		d.std.CryptBlocks(dst, src)
		return
	}
	if len(src)%BlockSize != 0 {
		panic("crypto/cipher: input not full blocks")
	}
	if len(dst) < len(src) {
		panic("crypto/cipher: output smaller than input")
	}
	if inexactOverlap(dst[:len(src)], src) {
		panic("crypto/cipher: invalid buffer overlap")
	}
	if len(src) == 0 {
		return
	}
	decryptBlocks(&d.b.dec, &d.iv, dst[:len(src)], src)
}

// SetIV sets the chaining value, as crypto/cipher's CBC decrypter does; iv must be 16 bytes
// (it panics otherwise).
func (d *Decrypter) SetIV(iv []byte) {
	if len(iv) != BlockSize {
		panic("cipher: incorrect length IV")
	}
	if d.std != nil {
		d.std.SetIV(iv)
		return
	}
	copy(d.iv[:], iv)
}

// inexactOverlap reports whether x and y share memory at any position other than the same
// start (crypto/internal/alias.InexactOverlap, which is not importable).
func inexactOverlap(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 || &x[0] == &y[0] {
		return false
	}
	return uintptr(unsafe.Pointer(&x[0])) <= uintptr(unsafe.Pointer(&y[len(y)-1])) &&
		uintptr(unsafe.Pointer(&y[0])) <= uintptr(unsafe.Pointer(&x[len(x)-1]))
}
