//go:build amd64 && !purego

#include "textflag.h"

// AES-128 key expansion (AESKEYGENASSIST) into the decryption schedule (AESIMC), and CBC
// decryption eight blocks at a time (AESDEC/AESDECLAST), SSE2 + AES-NI only.

// EXPAND_128 turns round key X0 into the next one, given X1 = AESKEYGENASSIST(X0, rcon)
// and X4 with its low 32 bits zero (the standard SHUFPS sequence: X0 ^= X0<<32 ^ X0<<64 ^
// X0<<96, then X0 ^= the broadcast word 3 of X1).
#define EXPAND_128 \
	PSHUFD $0xff, X1, X1 \
	SHUFPS $0x10, X0, X4 \
	PXOR   X4, X0 \
	SHUFPS $0x8c, X0, X4 \
	PXOR   X4, X0 \
	PXOR   X1, X0

// func expandKeyDec(key *[16]byte, dec *[176]byte)
// dec[0] = enc[10], dec[i] = AESIMC(enc[10-i]) for i = 1..9, dec[10] = enc[0].
TEXT ·expandKeyDec(SB), NOSPLIT, $0-16
	MOVQ   key+0(FP), AX
	MOVQ   dec+8(FP), DX
	MOVUPS (AX), X0
	MOVUPS X0, 160(DX)
	PXOR   X4, X4

	AESKEYGENASSIST $0x01, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 144(DX)
	AESKEYGENASSIST $0x02, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 128(DX)
	AESKEYGENASSIST $0x04, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 112(DX)
	AESKEYGENASSIST $0x08, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 96(DX)
	AESKEYGENASSIST $0x10, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 80(DX)
	AESKEYGENASSIST $0x20, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 64(DX)
	AESKEYGENASSIST $0x40, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 48(DX)
	AESKEYGENASSIST $0x80, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 32(DX)
	AESKEYGENASSIST $0x1b, X0, X1
	EXPAND_128
	AESIMC X0, X2
	MOVUPS X2, 16(DX)
	AESKEYGENASSIST $0x36, X0, X1
	EXPAND_128
	MOVUPS X0, (DX)
	RET

// PXOR_8, AESDEC_8, AESDECLAST_8: one round with round key K on each of the eight blocks in
// flight, X0-X7 (the loop8 step; unrolled so that the eight AESDECs of a round overlap).
#define PXOR_8(K) \
	PXOR   K, X0 \
	PXOR   K, X1 \
	PXOR   K, X2 \
	PXOR   K, X3 \
	PXOR   K, X4 \
	PXOR   K, X5 \
	PXOR   K, X6 \
	PXOR   K, X7

#define AESDEC_8(K) \
	AESDEC K, X0 \
	AESDEC K, X1 \
	AESDEC K, X2 \
	AESDEC K, X3 \
	AESDEC K, X4 \
	AESDEC K, X5 \
	AESDEC K, X6 \
	AESDEC K, X7

#define AESDECLAST_8(K) \
	AESDECLAST K, X0 \
	AESDECLAST K, X1 \
	AESDECLAST K, X2 \
	AESDECLAST K, X3 \
	AESDECLAST K, X4 \
	AESDECLAST K, X5 \
	AESDECLAST K, X6 \
	AESDECLAST K, X7

// func decryptBlocksAsm(dec *[176]byte, iv *[16]byte, dst *byte, src *byte, n int)
//
// Registers: X0-X7 the eight blocks in flight, X8 the chaining value (the ciphertext block
// before the current one), X9 a scratch for round keys and ciphertext reloads, X10-X15 the
// round keys dec[4..9] (kept for the whole call; dec[0..3] and dec[10] are reloaded from L1
// once per eight blocks, which costs nothing beside the 80 AESDECs).
//
// In place (dst == src) is safe: every eight-block step reads all its ciphertext, including the
// blocks the XOR needs and the next chaining value, before it stores any plaintext.
TEXT ·decryptBlocksAsm(SB), NOSPLIT, $0-40
	MOVQ   dec+0(FP), AX
	MOVQ   iv+8(FP), BX
	MOVQ   dst+16(FP), DI
	MOVQ   src+24(FP), SI
	MOVQ   n+32(FP), CX
	MOVUPS (BX), X8
	MOVUPS 64(AX), X10
	MOVUPS 80(AX), X11
	MOVUPS 96(AX), X12
	MOVUPS 112(AX), X13
	MOVUPS 128(AX), X14
	MOVUPS 144(AX), X15
	CMPQ   CX, $8
	JB     tail

loop8:
	MOVUPS 0(SI), X0
	MOVUPS 16(SI), X1
	MOVUPS 32(SI), X2
	MOVUPS 48(SI), X3
	MOVUPS 64(SI), X4
	MOVUPS 80(SI), X5
	MOVUPS 96(SI), X6
	MOVUPS 112(SI), X7
	MOVUPS (AX), X9
	PXOR_8(X9)
	MOVUPS 16(AX), X9
	AESDEC_8(X9)
	MOVUPS 32(AX), X9
	AESDEC_8(X9)
	MOVUPS 48(AX), X9
	AESDEC_8(X9)
	AESDEC_8(X10)
	AESDEC_8(X11)
	AESDEC_8(X12)
	AESDEC_8(X13)
	AESDEC_8(X14)
	AESDEC_8(X15)
	MOVUPS 160(AX), X9
	AESDECLAST_8(X9)
	PXOR   X8, X0
	MOVUPS 0(SI), X9
	PXOR   X9, X1
	MOVUPS 16(SI), X9
	PXOR   X9, X2
	MOVUPS 32(SI), X9
	PXOR   X9, X3
	MOVUPS 48(SI), X9
	PXOR   X9, X4
	MOVUPS 64(SI), X9
	PXOR   X9, X5
	MOVUPS 80(SI), X9
	PXOR   X9, X6
	MOVUPS 96(SI), X9
	PXOR   X9, X7
	MOVUPS 112(SI), X8
	MOVUPS X0, 0(DI)
	MOVUPS X1, 16(DI)
	MOVUPS X2, 32(DI)
	MOVUPS X3, 48(DI)
	MOVUPS X4, 64(DI)
	MOVUPS X5, 80(DI)
	MOVUPS X6, 96(DI)
	MOVUPS X7, 112(DI)
	ADDQ   $128, SI
	ADDQ   $128, DI
	SUBQ   $8, CX
	CMPQ   CX, $8
	JAE    loop8

tail:
	TESTQ  CX, CX
	JZ     done

loop1:
	MOVUPS (SI), X0
	MOVAPS X0, X1
	MOVUPS (AX), X9
	PXOR   X9, X0
	MOVUPS 16(AX), X9
	AESDEC X9, X0
	MOVUPS 32(AX), X9
	AESDEC X9, X0
	MOVUPS 48(AX), X9
	AESDEC X9, X0
	AESDEC X10, X0
	AESDEC X11, X0
	AESDEC X12, X0
	AESDEC X13, X0
	AESDEC X14, X0
	AESDEC X15, X0
	MOVUPS 160(AX), X9
	AESDECLAST X9, X0
	PXOR   X8, X0
	MOVUPS X0, (DI)
	MOVAPS X1, X8
	ADDQ   $16, SI
	ADDQ   $16, DI
	DECQ   CX
	JNZ    loop1

done:
	MOVUPS X8, (BX)
	RET
