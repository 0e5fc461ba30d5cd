package usagelog

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"testing"

	"github.com/tallyledger/tally/adapters/usagelog/internal/cbc"
)

// BenchmarkRSADecrypt is one raw RSA-2048 private-key operation, the unit a decode's cost is
// compared with.
func BenchmarkRSADecrypt(b *testing.B) {
	priv := testKey(b, 1)
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	ct, err := rsa.EncryptPKCS1v15(rand.Reader, &priv.PublicKey, make([]byte, 16))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("DecryptPKCS1v15", func(b *testing.B) {
		for b.Loop() {
			//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
			if _, err := rsa.DecryptPKCS1v15(nil, priv, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DecryptPKCS1v15SessionKey", func(b *testing.B) {
		key := make([]byte, 16)
		for b.Loop() {
			//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
			if err := rsa.DecryptPKCS1v15SessionKey(nil, priv, ct, key); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAESCBCDecrypt is AES-128-CBC decryption over 64 KiB in one call, the unit of the
// fast path's remaining work (about 169 × n² bytes for n new layers): the standard library's
// decrypter (one block at a time on amd64) and the fast path's (package cbc: eight blocks at a
// time with AES-NI).
func BenchmarkAESCBCDecrypt(b *testing.B) {
	key, iv := make([]byte, 16), make([]byte, 16)
	block, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	fast, err := cbc.NewBlock(key)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for _, tc := range []struct {
		name string
		mode cipher.BlockMode
	}{{"stdlib", cipher.NewCBCDecrypter(block, iv)}, {"fastpath", fast.NewCBCDecrypter(iv)}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				tc.mode.CryptBlocks(buf, buf)
			}
		})
	}
}

// BenchmarkDecodePerLayer decodes a log of 100 and of 1000 layers with no older history and
// reports the cost per layer, to set beside BenchmarkRSADecrypt. The walk's work grows with
// the square of the new layers (each header is decrypted through every layer around it), so
// the 1000-layer case, an upload at the limit, shows what that costs beside the RSA.
func BenchmarkDecodePerLayer(b *testing.B) {
	priv := testKey(b, 1)
	ring := testRing(b, priv)
	for _, layers := range []int{100, 1000} {
		log := buildLog(b, &priv.PublicKey, randomEntries(newTestRand(1), layers))[layers-1]
		for _, tc := range []struct {
			name string
			open opener
		}{{"fast", nil}, {"straightforward", openFull}} {
			b.Run(fmt.Sprintf("layers=%d/%s", layers, tc.name), func(b *testing.B) {
				d := &Decoder{Keys: ring, open: tc.open}
				for b.Loop() {
					if _, err := d.DecodeRaw(context.Background(), log, NewestFirst, nil); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*layers), "ns/layer")
			})
		}
	}
}

// BenchmarkLongHistory decodes new layers on top of a long known history: the upload of a
// long-lived License Server file. The history is one known layer with an opaque
// EncryptedObject of the size of that many real layers (310 bytes each): the decoder stops at
// it and never opens it, so only its size matters, and building a real history of 100,000
// layers would take quadratic time. The 1000-on-100,000 case (31 GB of AES to build and to
// decode straightforwardly) runs only with TALLY_LONG=1.
func BenchmarkLongHistory(b *testing.B) {
	priv := testKey(b, 1)
	ring := testRing(b, priv)
	const layerBytes = 310
	for _, old := range []int{10_000, 100_000} {
		history := opaqueHistory(b, &priv.PublicKey, old*layerBytes)
		historyID, err := LayerIDOf(history)
		if err != nil {
			b.Fatal(err)
		}
		known := func(id LayerID) bool { return id == historyID }
		for _, fresh := range []int{100, 1000} {
			if old*fresh > 10_000_000 && os.Getenv("TALLY_LONG") == "" {
				continue
			}
			log := history
			for i := range fresh {
				if log, err = Record(log, &priv.PublicKey, int64(1+i%5), 1, int64(1_700_000_000+i), false); err != nil {
					b.Fatal(err)
				}
			}
			for _, tc := range []struct {
				name string
				open opener
			}{{"fast", nil}, {"straightforward", openFull}} {
				b.Run(fmt.Sprintf("old=%d/new=%d/%s", old, fresh, tc.name), func(b *testing.B) {
					d := &Decoder{Keys: ring, open: tc.open, MaxInputBytes: 2 * len(log)}
					for b.Loop() {
						entries, err := d.DecodeRaw(context.Background(), log, OldestFirst, known)
						if err != nil || len(entries) != fresh {
							b.Fatalf("%d entries, %v", len(entries), err)
						}
					}
					b.ReportMetric(float64(len(log))/1e6, "MB/file")
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*fresh), "ns/layer")
				})
			}
		}
	}
}

// BenchmarkReuploadDigest measures what DecodeLog's SHA-256 of the whole log adds to a
// re-upload (the outermost layer known, no RSA operation): Decode of the base64 text against
// DecodeLog of the same text, on a log of about 10,000 layers (3.1 MB).
func BenchmarkReuploadDigest(b *testing.B) {
	priv := testKey(b, 1)
	ring := testRing(b, priv)
	history := opaqueHistory(b, &priv.PublicKey, 10_000*310)
	text := base64.StdEncoding.EncodeToString(history)
	ref, err := LayerRefOf(history)
	if err != nil {
		b.Fatal(err)
	}
	d := &Decoder{Keys: ring, MaxInputBytes: 2 * len(text)}
	b.Run("Decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := d.Decode(context.Background(), text, OldestFirst, func(id LayerID) bool { return id == ref.ID }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DecodeLog", func(b *testing.B) {
		for b.Loop() {
			if _, err := d.DecodeLog(context.Background(), text, OldestFirst, func(r LayerRef) bool { return r == ref }); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLayerRef measures what a layer's identities and digest cost the walk: three
// SHA-256 of at most 304 bytes, from the header the walk reads anyway.
func BenchmarkLayerRef(b *testing.B) {
	priv := testKey(b, 1)
	raw, err := Record(nil, &priv.PublicKey, 1, 1, 1_700_000_000, false)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := LayerRefOf(raw); err != nil {
			b.Fatal(err)
		}
	}
}

// openFullHashing is openFull that also hashes the layer's whole ciphertext (its
// EncryptedObject, which with the IV and wrapped key the digest covers already is all of its
// bytes) into digests: what keeping a digest of each new layer's whole bytes would cost. A
// layer's bytes exist only inside the plaintext of the layer around it, so every new layer must
// be decrypted whole: the fast path cannot serve it.
func openFullHashing(digests *[][32]byte) opener {
	return func(parent source, off, n int, iv, key []byte) (source, error) {
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, fmt.Errorf("aes key: %w", err)
		}
		ct, err := parent.bytes(off, n)
		if err != nil {
			return nil, err
		}
		*digests = append(*digests, sha256.Sum256(ct))
		cipher.NewCBCDecrypter(block, iv).CryptBlocks(ct, ct)
		return plainSource(ct), nil
	}
}

// BenchmarkWholeLayerDigests measures why Tally keeps no digest of each applied layer's whole
// bytes (docs/uploads.md, "What the format can and cannot prove"): new layers on a long known
// history decoded as the decoder does (the fast path, with the whole log's SHA-256) against the
// same decode that also hashes each new layer's whole bytes, which needs each of them decrypted
// whole. The history is opaque, as in BenchmarkLongHistory. By default 100 new layers on
// 10,000 older ones; with TALLY_LONG=1 also 1000 on 10,000 and 1000 on 100,000 (the case of the
// performance target "1000 new entries on 100,000 older ones cost at most 2× a fresh file",
// docs/performance.md; building that log takes about 31 GB of AES).
func BenchmarkWholeLayerDigests(b *testing.B) {
	priv := testKey(b, 1)
	ring := testRing(b, priv)
	const layerBytes = 310
	cases := [][2]int{{10_000, 100}}
	if os.Getenv("TALLY_LONG") != "" {
		cases = append(cases, [2]int{10_000, 1000}, [2]int{100_000, 1000})
	}
	for _, c := range cases {
		old, fresh := c[0], c[1]
		history := opaqueHistory(b, &priv.PublicKey, old*layerBytes)
		historyID, err := LayerIDOf(history)
		if err != nil {
			b.Fatal(err)
		}
		known := func(r LayerRef) bool { return r.ID == historyID }
		log := history
		for i := range fresh {
			if log, err = Record(log, &priv.PublicKey, int64(1+i%5), 1, int64(1_700_000_000+i), false); err != nil {
				b.Fatal(err)
			}
		}
		text := base64.StdEncoding.EncodeToString(log)
		var digests [][32]byte
		for _, tc := range []struct {
			name string
			open opener
		}{{"decoder", nil}, {"whole-layer-digests", openFullHashing(&digests)}} {
			b.Run(fmt.Sprintf("old=%d/new=%d/%s", old, fresh, tc.name), func(b *testing.B) {
				d := &Decoder{Keys: ring, open: tc.open, MaxInputBytes: 2 * len(text), MaxNewLayers: fresh}
				for b.Loop() {
					digests = digests[:0]
					l, err := d.DecodeLog(context.Background(), text, OldestFirst, known)
					if err != nil || len(l.Entries) != fresh {
						b.Fatalf("%v, %+v", err, l)
					}
					if tc.open != nil && len(digests) != fresh {
						b.Fatalf("%d layer digests, want %d", len(digests), fresh)
					}
				}
				b.ReportMetric(float64(len(log))/1e6, "MB/file")
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*fresh), "ns/layer")
			})
		}
	}
}
