package usagelog

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"sync/atomic"
)

// KeyRing holds the server's RSA private keys: the current one first, then older ones kept so
// that logs written for them still decode (rotation). It counts the RSA private-key operations
// it performs, which is the dominant cost of a decode and what the layer limit bounds.
type KeyRing struct {
	keys        []*rsa.PrivateKey
	decryptions atomic.Uint64
}

// NewKeyRing returns a ring of the given keys; the first is the current key. It refuses an empty
// list and nil or invalid keys.
func NewKeyRing(keys ...*rsa.PrivateKey) (*KeyRing, error) {
	if len(keys) == 0 {
		return nil, errors.New("key ring: no keys")
	}
	for i, k := range keys {
		if k == nil {
			return nil, fmt.Errorf("key ring: key %d is nil", i)
		}
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("key ring: key %d: %w", i, err)
		}
	}
	return &KeyRing{keys: append([]*rsa.PrivateKey(nil), keys...)}, nil
}

// Current returns the key whose public part clients should encrypt for.
func (r *KeyRing) Current() *rsa.PrivateKey { return r.keys[0] }

// Public returns the public part of the current key.
func (r *KeyRing) Public() *rsa.PublicKey { return &r.keys[0].PublicKey }

// Keys returns the keys, current first.
func (r *KeyRing) Keys() []*rsa.PrivateKey { return append([]*rsa.PrivateKey(nil), r.keys...) }

// Decryptions returns how many RSA private-key operations the ring has performed so far.
func (r *KeyRing) Decryptions() uint64 { return r.decryptions.Load() }

// unwrap returns one candidate AES key per ring key whose modulus size matches encryptedKey,
// in ring order.
//
// It uses rsa.DecryptPKCS1v15SessionKey rather than rsa.DecryptPKCS1v15: when the padding is
// invalid or the message is not 16 bytes, the candidate stays a random key, in constant time,
// and the layer then fails to parse like any other corrupted layer. Whether the padding was
// valid is thus never observable, which denies a Bleichenbacher padding oracle; the decoder
// tells the right key by the layer parsing (a random key passes the inner header checks with
// probability far below 2^-16 and the full layer checks practically never).
func (r *KeyRing) unwrap(encryptedKey []byte) [][]byte {
	var candidates [][]byte
	for _, k := range r.keys {
		if k.Size() != len(encryptedKey) {
			continue
		}
		key := make([]byte, 16)
		rand.Read(key) // never fails (crypto/rand, Go 1.24+)
		r.decryptions.Add(1)
		// The format mandates PKCS#1 v1.5 key transport; see above for why this call is safe here.
		//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
		if err := rsa.DecryptPKCS1v15SessionKey(nil, k, encryptedKey, key); err != nil {
			// Only for a ciphertext not below the modulus: public information.
			continue
		}
		candidates = append(candidates, key)
	}
	return candidates
}
