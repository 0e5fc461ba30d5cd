package usagelog

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sort"
)

// KeyBits is the size of the keys GenerateKey makes.
const KeyBits = 2048

// CurrentKeyFile is the name, inside a data directory, of the current private key. Older keys,
// still accepted for decoding, sit beside it as rsa-private-*.pem.
const CurrentKeyFile = "rsa-private.pem"

// GenerateKey makes a new RSA-2048 private key.
func GenerateKey() (*rsa.PrivateKey, error) {
	k, err := rsa.GenerateKey(rand.Reader, KeyBits)
	if err != nil {
		return nil, fmt.Errorf("generating an RSA key: %w", err)
	}
	return k, nil
}

// ParsePrivateKeyPEM parses an RSA private key in PEM, PKCS#1 ("RSA PRIVATE KEY") or PKCS#8
// ("PRIVATE KEY").
func ParsePrivateKeyPEM(data []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PKCS#1 private key: %w", err)
		}
		return k, nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PKCS#8 private key: %w", err)
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("PKCS#8 private key is a %T, not RSA", k)
		}
		return rk, nil
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
}

// MarshalPrivateKeyPEM encodes key as PKCS#8 PEM.
func MarshalPrivateKeyPEM(key *rsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// LoadPrivateKeyFile reads a PEM private key file.
func LoadPrivateKeyFile(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading private key: %w", err)
	}
	k, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	return k, nil
}

// SavePrivateKeyFile writes key to path as PKCS#8 PEM with mode 0600, atomically (a temporary
// file in the same directory, synced, then renamed over path).
func SavePrivateKeyFile(path string, key *rsa.PrivateKey) error {
	tmp, err := writeTempKey(path, key)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("saving private key: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// createPrivateKeyFile is SavePrivateKeyFile that never replaces an existing file: the
// temporary file is hard-linked to path, which fails if path exists. Two processes starting on
// one data directory thus cannot each keep a different key.
func createPrivateKeyFile(path string, key *rsa.PrivateKey) error {
	tmp, err := writeTempKey(path, key)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("creating private key: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

func writeTempKey(path string, key *rsa.PrivateKey) (string, error) {
	data, err := MarshalPrivateKeyPEM(key)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".rsa-key-*.tmp") // created with mode 0600
	if err != nil {
		return "", fmt.Errorf("saving private key: %w", err)
	}
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(0o600), f.Sync(), f.Close())
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("saving private key: %w", err)
	}
	return f.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// LoadOrCreateKeyRing loads the ring of a data directory: dir/rsa-private.pem is the current key,
// generated (and dir created, mode 0700) on first start; every dir/rsa-private-*.pem, in name
// order, follows it as an older key still accepted for decoding.
func LoadOrCreateKeyRing(dir string) (*KeyRing, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("key directory: %w", err)
	}
	current := filepath.Join(dir, CurrentKeyFile)
	if _, err := os.Stat(current); errors.Is(err, fs.ErrNotExist) {
		key, err := GenerateKey()
		if err != nil {
			return nil, err
		}
		// Losing a race with another process is fine: its key is on disk and is loaded below.
		if err := createPrivateKeyFile(current, key); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("current key: %w", err)
	}
	older, err := filepath.Glob(filepath.Join(dir, "rsa-private-*.pem"))
	if err != nil {
		return nil, fmt.Errorf("older keys: %w", err)
	}
	sort.Strings(older)
	return LoadKeyRingFiles(append([]string{current}, older...)...)
}

// LoadKeyRingFiles loads a ring from PEM private key files; the first is the current key.
func LoadKeyRingFiles(paths ...string) (*KeyRing, error) {
	keys := make([]*rsa.PrivateKey, 0, len(paths))
	for _, p := range paths {
		k, err := LoadPrivateKeyFile(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return NewKeyRing(keys...)
}

// PublicKeyPEM encodes pub as a PKIX ("PUBLIC KEY") PEM block.
func PublicKeyPEM(pub *rsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding the public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// rsaKeyValue is the .NET XML form of an RSA key (RSA.ToXmlString), of which only the public
// part is read or written.
type rsaKeyValue struct {
	XMLName  xml.Name `xml:"RSAKeyValue"`
	Modulus  string   `xml:"Modulus"`
	Exponent string   `xml:"Exponent"`
}

// PublicKeyXML encodes pub in the .NET XML form the License Server configuration takes:
// <RSAKeyValue><Modulus>…</Modulus><Exponent>…</Exponent></RSAKeyValue>, base64 big-endian.
func PublicKeyXML(pub *rsa.PublicKey) string {
	e := big.NewInt(int64(pub.E))
	return "<RSAKeyValue><Modulus>" + base64.StdEncoding.EncodeToString(pub.N.Bytes()) +
		"</Modulus><Exponent>" + base64.StdEncoding.EncodeToString(e.Bytes()) +
		"</Exponent></RSAKeyValue>"
}

// ParsePublicKey parses an RSA public key given as PEM (PKIX "PUBLIC KEY" or PKCS#1 "RSA PUBLIC
// KEY") or in the .NET XML form.
func ParsePublicKey(data []byte) (*rsa.PublicKey, error) {
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("<")) {
		return parsePublicKeyXML(trimmed)
	}
	block, _ := pem.Decode(trimmed)
	if block == nil {
		return nil, errors.New("public key: neither PEM nor <RSAKeyValue> XML")
	}
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key is a %T, not RSA", k)
		}
		return rk, nil
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("PEM block %q is not a public key", block.Type)
	}
}

func parsePublicKeyXML(data []byte) (*rsa.PublicKey, error) {
	var v rsaKeyValue
	if err := xml.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("public key XML: %w", err)
	}
	n, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace([]byte(v.Modulus))))
	if err != nil {
		return nil, fmt.Errorf("public key XML: Modulus: %w", err)
	}
	e, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace([]byte(v.Exponent))))
	if err != nil {
		return nil, fmt.Errorf("public key XML: Exponent: %w", err)
	}
	modulus := new(big.Int).SetBytes(n)
	exponent := new(big.Int).SetBytes(e)
	switch {
	case modulus.BitLen() < 1024 || modulus.BitLen() > 8*maxEncryptedKeyBytes:
		return nil, fmt.Errorf("public key XML: a modulus of %d bits", modulus.BitLen())
	case modulus.Bit(0) == 0:
		return nil, errors.New("public key XML: even modulus")
	case !exponent.IsInt64() || exponent.Int64() < 3 || exponent.Int64() > 1<<31-1 || exponent.Bit(0) == 0:
		return nil, fmt.Errorf("public key XML: exponent %s", exponent)
	}
	return &rsa.PublicKey{N: modulus, E: int(exponent.Int64())}, nil
}
