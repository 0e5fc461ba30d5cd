//go:build amd64 && !purego

package cbc

import "golang.org/x/sys/cpu"

// haveAsm reports whether the assembly kernel can run: it needs AES-NI (and SSE2, which every
// amd64 CPU has).
func haveAsm() bool { return cpu.X86.HasAES }

// expandKeyDec writes the AES-128 decryption key schedule of key to dec: the last encryption
// round key, the nine middle ones through AESIMC in reverse order, then the key itself.
//
//go:noescape
func expandKeyDec(key *[KeySize]byte, dec *[scheduleSize]byte)

// decryptBlocksAsm decrypts n blocks of CBC from src to dst (the same memory or disjoint)
// starting from the chaining value *iv, and leaves the last ciphertext block in *iv.
//
//go:noescape
func decryptBlocksAsm(dec *[scheduleSize]byte, iv *[BlockSize]byte, dst, src *byte, n int)

// decryptBlocks decrypts len(src)/16 > 0 blocks; dst is as long as src.
func decryptBlocks(dec *[scheduleSize]byte, iv *[BlockSize]byte, dst, src []byte) {
	decryptBlocksAsm(dec, iv, &dst[0], &src[0], len(src)/BlockSize)
}
