//go:build !amd64 || purego

package cbc

// haveAsm reports false: there is no assembly kernel for this build.
func haveAsm() bool { return false }

// expandKeyDec is never called without the assembly kernel (Block.std is set).
func expandKeyDec(*[KeySize]byte, *[scheduleSize]byte) {
	panic("cbc: no assembly kernel in this build")
}

// decryptBlocks is never called without the assembly kernel (Block.std is set).
func decryptBlocks(*[scheduleSize]byte, *[BlockSize]byte, []byte, []byte) {
	panic("cbc: no assembly kernel in this build")
}
