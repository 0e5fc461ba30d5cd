package cbc

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"math/rand/v2"
	"testing"
)

// implementations are the ways a Block can be built on this machine: the assembly kernel where
// it runs, and always the standard-library fallback.
func implementations(t testing.TB) []struct {
	name   string
	useAsm bool
} {
	impls := []struct {
		name   string
		useAsm bool
	}{{"generic", false}}
	if haveAsm() {
		impls = append(impls, struct {
			name   string
			useAsm bool
		}{"asm", true})
	} else {
		t.Logf("no assembly kernel in this build or on this CPU: testing the fallback only")
	}
	return impls
}

func mustBlock(t testing.TB, key []byte, useAsm bool) *Block {
	t.Helper()
	b, err := newBlock(key, useAsm)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stdDecrypt is the reference: crypto/cipher's CBC decryption of src in one call.
func stdDecrypt(t testing.TB, key, iv, src []byte) []byte {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(src))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(out, src)
	return out
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// lengths are the block counts tested: every one up to 40 (all tails after 0..5 eight-block
// steps), then large ones with odd tails.
func lengths() []int {
	var ns []int
	for n := 0; n <= 40; n++ {
		ns = append(ns, n)
	}
	return append(ns, 4096, 4096+1, 4096+7, 4096+9, 512+3)
}

func TestDecryptMatchesStandardLibrary(t *testing.T) {
	for _, impl := range implementations(t) {
		t.Run(impl.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			for _, blocks := range lengths() {
				key, iv := randBytes(rng, 16), randBytes(rng, 16)
				ct := randBytes(rng, blocks*BlockSize)
				want := stdDecrypt(t, key, iv, ct)
				b := mustBlock(t, key, impl.useAsm)

				// Out of place, into a longer dst whose extra bytes must stay untouched.
				dst := bytes.Repeat([]byte{0xAA}, len(ct)+BlockSize)
				src := bytes.Clone(ct)
				b.NewCBCDecrypter(iv).CryptBlocks(dst, src)
				if !bytes.Equal(dst[:len(ct)], want) {
					t.Fatalf("%d blocks out of place: plaintext differs from crypto/cipher's", blocks)
				}
				if !bytes.Equal(dst[len(ct):], bytes.Repeat([]byte{0xAA}, BlockSize)) {
					t.Fatalf("%d blocks: wrote past len(src)", blocks)
				}
				if !bytes.Equal(src, ct) {
					t.Fatalf("%d blocks out of place: src modified", blocks)
				}

				// Out of place between buffers that start at odd addresses (the kernel's loads
				// and stores are unaligned).
				odd := make([]byte, 2*len(ct)+3)
				oddSrc, oddDst := odd[1:1+len(ct)], odd[2+len(ct):2+2*len(ct)]
				copy(oddSrc, ct)
				b.NewCBCDecrypter(iv).CryptBlocks(oddDst, oddSrc)
				if !bytes.Equal(oddDst, want) {
					t.Fatalf("%d blocks, unaligned: plaintext differs from crypto/cipher's", blocks)
				}

				// In place.
				buf := bytes.Clone(ct)
				b.NewCBCDecrypter(iv).CryptBlocks(buf, buf)
				if !bytes.Equal(buf, want) {
					t.Fatalf("%d blocks in place: plaintext differs from crypto/cipher's", blocks)
				}
			}
		})
	}
}

// TestChainingAcrossCalls splits one decryption into CryptBlocks calls at random block
// boundaries, in place or not, and re-aims the decrypter with SetIV between streams: the
// chaining value must carry exactly as crypto/cipher's does.
func TestChainingAcrossCalls(t *testing.T) {
	for _, impl := range implementations(t) {
		t.Run(impl.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			for round := range 300 {
				key := randBytes(rng, 16)
				b := mustBlock(t, key, impl.useAsm)
				stdBlock, err := aes.NewCipher(key)
				if err != nil {
					t.Fatal(err)
				}
				iv := randBytes(rng, 16)
				d := b.NewCBCDecrypter(iv)
				ref := cipher.NewCBCDecrypter(stdBlock, iv)
				for stream := range 3 {
					if stream > 0 {
						iv = randBytes(rng, 16)
						d.SetIV(iv)
						ref.(interface{ SetIV([]byte) }).SetIV(iv)
					}
					ct := randBytes(rng, rng.IntN(60)*BlockSize)
					want := make([]byte, len(ct))
					ref.CryptBlocks(want, ct)
					got := bytes.Clone(ct)
					inPlace := rng.IntN(2) == 0
					for off := 0; off < len(ct); {
						n := min(len(ct)-off, rng.IntN(20)*BlockSize)
						if inPlace {
							d.CryptBlocks(got[off:off+n], got[off:off+n])
						} else {
							d.CryptBlocks(got[off:off+n], ct[off:off+n])
						}
						off += n
					}
					if !bytes.Equal(got, want) {
						t.Fatalf("round %d stream %d (%d blocks, in place %v): differs from crypto/cipher's", round, stream, len(ct)/BlockSize, inPlace)
					}
				}
			}
		})
	}
}

// TestDecryptersOfOneBlockAreIndependent: decrypters share the key schedule, not the chaining
// value.
func TestDecryptersOfOneBlockAreIndependent(t *testing.T) {
	for _, impl := range implementations(t) {
		t.Run(impl.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			key, iv1, iv2 := randBytes(rng, 16), randBytes(rng, 16), randBytes(rng, 16)
			ct1, ct2 := randBytes(rng, 19*BlockSize), randBytes(rng, 19*BlockSize)
			b := mustBlock(t, key, impl.useAsm)
			d1, d2 := b.NewCBCDecrypter(iv1), b.NewCBCDecrypter(iv2)
			got1, got2 := make([]byte, len(ct1)), make([]byte, len(ct2))
			for i := 0; i < len(ct1); i += 3 * BlockSize {
				j := min(i+3*BlockSize, len(ct1))
				d1.CryptBlocks(got1[i:j], ct1[i:j])
				d2.CryptBlocks(got2[i:j], ct2[i:j])
			}
			if !bytes.Equal(got1, stdDecrypt(t, key, iv1, ct1)) || !bytes.Equal(got2, stdDecrypt(t, key, iv2, ct2)) {
				t.Fatal("interleaved decrypters of one Block differ from crypto/cipher's")
			}
		})
	}
}

// TestKnownAnswer is the NIST SP 800-38A F.2.2 CBC-AES128 decryption vector, so that the
// kernel is checked against more than the standard library.
func TestKnownAnswer(t *testing.T) {
	hex := func(s string) []byte {
		var b []byte
		if _, err := fmt.Sscanf(s, "%x", &b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	key := hex("2b7e151628aed2a6abf7158809cf4f3c")
	iv := hex("000102030405060708090a0b0c0d0e0f")
	ct := hex("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2" +
		"73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7")
	pt := hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51" +
		"30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
	for _, impl := range implementations(t) {
		got := make([]byte, len(ct))
		mustBlock(t, key, impl.useAsm).NewCBCDecrypter(iv).CryptBlocks(got, ct)
		if !bytes.Equal(got, pt) {
			t.Errorf("%s: %x, want %x", impl.name, got, pt)
		}
	}
}

func TestNewBlockRefusesOtherKeySizes(t *testing.T) {
	for _, n := range []int{0, 8, 15, 17, 24, 32} {
		if _, err := NewBlock(make([]byte, n)); err == nil {
			t.Errorf("NewBlock accepted a %d-byte key", n)
		}
	}
	if _, err := NewBlock(make([]byte, 16)); err != nil {
		t.Errorf("NewBlock refused a 16-byte key: %v", err)
	}
}

// TestEncrypterRoundTrip: NewCBCEncrypter is the standard library's encrypter for the same key,
// and the decrypter undoes it.
func TestEncrypterRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, impl := range implementations(t) {
		key, iv, pt := randBytes(rng, 16), randBytes(rng, 16), randBytes(rng, 33*BlockSize)
		b := mustBlock(t, key, impl.useAsm)
		ct := make([]byte, len(pt))
		b.NewCBCEncrypter(iv).CryptBlocks(ct, pt)
		std, err := aes.NewCipher(key)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, len(pt))
		cipher.NewCBCEncrypter(std, iv).CryptBlocks(want, pt)
		if !bytes.Equal(ct, want) {
			t.Fatalf("%s: encryption differs from crypto/cipher's", impl.name)
		}
		b.NewCBCDecrypter(iv).CryptBlocks(ct, ct)
		if !bytes.Equal(ct, pt) {
			t.Fatalf("%s: decryption does not undo encryption", impl.name)
		}
	}
}

// panicMessage runs f and returns what it panicked with ("" if it did not).
func panicMessage(f func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}

// TestMisusePanicsLikeStandardLibrary: partial blocks, a short dst, partially overlapping
// buffers and wrong IV lengths panic with crypto/cipher's messages.
func TestMisusePanicsLikeStandardLibrary(t *testing.T) {
	key, iv := make([]byte, 16), make([]byte, 16)
	std, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10*BlockSize)
	cases := []struct {
		name string
		call func(d cipher.BlockMode)
	}{
		{"partial block", func(d cipher.BlockMode) { d.CryptBlocks(buf[:17], buf[:17]) }},
		{"short dst", func(d cipher.BlockMode) { d.CryptBlocks(buf[:16], buf[16:48]) }},
		{"overlap forward", func(d cipher.BlockMode) { d.CryptBlocks(buf[16:80], buf[:64]) }},
		{"overlap backward", func(d cipher.BlockMode) { d.CryptBlocks(buf[:64], buf[16:80]) }},
		{"SetIV short", func(d cipher.BlockMode) { d.(interface{ SetIV([]byte) }).SetIV(iv[:15]) }},
	}
	for _, impl := range implementations(t) {
		b := mustBlock(t, key, impl.useAsm)
		for _, tc := range cases {
			want := panicMessage(func() { tc.call(cipher.NewCBCDecrypter(std, iv)) })
			got := panicMessage(func() { tc.call(b.NewCBCDecrypter(iv)) })
			if want == "" || got != want {
				t.Errorf("%s, %s: panic %q, crypto/cipher's %q", impl.name, tc.name, got, want)
			}
		}
		want := panicMessage(func() { cipher.NewCBCDecrypter(std, iv[:8]) })
		got := panicMessage(func() { b.NewCBCDecrypter(iv[:8]) })
		if want == "" || got != want {
			t.Errorf("%s, short IV: panic %q, crypto/cipher's %q", impl.name, got, want)
		}
		// Adjacent, non-overlapping and empty buffers are fine.
		if msg := panicMessage(func() {
			d := b.NewCBCDecrypter(iv)
			d.CryptBlocks(buf[64:128], buf[:64])
			d.CryptBlocks(nil, nil)
			d.CryptBlocks(buf[:0], buf[16:16])
		}); msg != "" {
			t.Errorf("%s: panicked on valid buffers: %s", impl.name, msg)
		}
	}
}

// FuzzDecrypt compares the decrypter with crypto/cipher's for any key, IV, data and split.
func FuzzDecrypt(f *testing.F) {
	f.Add(make([]byte, 16), make([]byte, 16), make([]byte, 9*16), uint8(3), true)
	f.Add(bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16), make([]byte, 40*16+5), uint8(0), false)
	f.Fuzz(func(t *testing.T, key, iv, data []byte, split uint8, inPlace bool) {
		if len(key) != 16 || len(iv) != 16 {
			if _, err := NewBlock(key); (err == nil) != (len(key) == 16) {
				t.Fatalf("NewBlock with a %d-byte key: err %v", len(key), err)
			}
			return
		}
		data = data[:len(data)/BlockSize*BlockSize]
		want := stdDecrypt(t, key, iv, data)
		for _, impl := range implementations(t) {
			d := mustBlock(t, key, impl.useAsm).NewCBCDecrypter(iv)
			got := make([]byte, len(data))
			cut := min(int(split)*BlockSize, len(data))
			if inPlace {
				copy(got, data)
				d.CryptBlocks(got[:cut], got[:cut])
				d.CryptBlocks(got[cut:], got[cut:])
			} else {
				d.CryptBlocks(got[:cut], data[:cut])
				d.CryptBlocks(got[cut:], data[cut:])
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s: differs from crypto/cipher's", impl.name)
			}
		}
	})
}

// BenchmarkCBCDecrypt is this package's decryption beside crypto/cipher's, in place, one call
// per buffer.
func BenchmarkCBCDecrypt(b *testing.B) {
	key, iv := make([]byte, 16), make([]byte, 16)
	std, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []int{64 << 10, 8 << 10, 512} {
		buf := make([]byte, size)
		modes := []struct {
			name string
			mode cipher.BlockMode
		}{{"stdlib", cipher.NewCBCDecrypter(std, iv)}}
		for _, impl := range implementations(b) {
			modes = append(modes, struct {
				name string
				mode cipher.BlockMode
			}{impl.name, mustBlock(b, key, impl.useAsm).NewCBCDecrypter(iv)})
		}
		for _, m := range modes {
			b.Run(fmt.Sprintf("%s/%d", m.name, size), func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					m.mode.CryptBlocks(buf, buf)
				}
			})
		}
	}
}

// BenchmarkNewBlock is the per-layer setup: this package's key schedule beside
// crypto/aes.NewCipher's (which the fast path used before, and pop still builds on demand).
func BenchmarkNewBlock(b *testing.B) {
	key := make([]byte, 16)
	b.Run("stdlib", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := aes.NewCipher(key); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cbc", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := NewBlock(key); err != nil {
				b.Fatal(err)
			}
		}
	})
}
