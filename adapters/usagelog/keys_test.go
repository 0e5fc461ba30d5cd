package usagelog

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateKeyRing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ring, err := LoadOrCreateKeyRing(dir) // generates a real RSA-2048 key
	if err != nil {
		t.Fatal(err)
	}
	if bits := ring.Current().N.BitLen(); bits != KeyBits {
		t.Errorf("generated a %d-bit key", bits)
	}
	info, err := os.Stat(filepath.Join(dir, CurrentKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("key file mode %o, want 600", mode)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".rsa-key-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// The second start loads the same key.
	again, err := LoadOrCreateKeyRing(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Current().Equal(ring.Current()) || len(again.Keys()) != 1 {
		t.Fatal("second start did not load the key of the first")
	}

	// Rotation: an older key beside it is loaded after the current one, and logs for it decode.
	old := testKey(t, 2)
	if err := SavePrivateKeyFile(filepath.Join(dir, "rsa-private-2024.pem"), old); err != nil {
		t.Fatal(err)
	}
	rotated, err := LoadOrCreateKeyRing(dir)
	if err != nil {
		t.Fatal(err)
	}
	keys := rotated.Keys()
	if len(keys) != 2 || !keys[0].Equal(ring.Current()) || !keys[1].Equal(old) {
		t.Fatalf("ring after rotation has %d keys in the wrong order", len(keys))
	}
	log, err := Record(nil, &old.PublicKey, 4, 2, 100, false)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := (&Decoder{Keys: rotated}).DecodeRaw(context.Background(), log, NewestFirst, nil)
	if err != nil || len(entries) != 1 || entries[0].ObjectID != 4 {
		t.Fatalf("log for the older key: %v, %v", entries, err)
	}
}

func TestPrivateKeyFormats(t *testing.T) {
	key := testKey(t, 1)
	dir := t.TempDir()
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	pkcs8, err := MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"pkcs1.pem": pkcs1, "pkcs8.pem": pkcs8} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := LoadPrivateKeyFile(path)
		if err != nil || !got.Equal(key) {
			t.Errorf("%s: %v", name, err)
		}
	}
	ring, err := LoadKeyRingFiles(filepath.Join(dir, "pkcs8.pem"), filepath.Join("testdata", "test-key-2.pem"))
	if err != nil || len(ring.Keys()) != 2 || !ring.Current().Equal(key) {
		t.Fatalf("LoadKeyRingFiles: %v", err)
	}
	// Saving replaces atomically and keeps mode 0600.
	path := filepath.Join(dir, "saved.pem")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SavePrivateKeyFile(path, key); err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Errorf("saved key mode %o", info.Mode().Perm())
	}
	if got, err := LoadPrivateKeyFile(path); err != nil || !got.Equal(key) {
		t.Errorf("saved key does not load back: %v", err)
	}

	for name, data := range map[string]string{
		"not PEM":    "hello",
		"public key": string(mustPublicPEM(t, &key.PublicKey)),
		"garbage":    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
	} {
		if _, err := ParsePrivateKeyPEM([]byte(data)); err == nil {
			t.Errorf("%s parsed as a private key", name)
		}
	}
	if _, err := NewKeyRing(); err == nil {
		t.Error("empty key ring accepted")
	}
	if _, err := NewKeyRing(key, nil); err == nil {
		t.Error("nil key accepted")
	}
}

func mustPublicPEM(t *testing.T, pub *rsa.PublicKey) []byte {
	t.Helper()
	b, err := PublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPublicKeyExportRoundTrip(t *testing.T) {
	key := testKey(t, 1)
	pub := &key.PublicKey
	xmlForm := PublicKeyXML(pub)
	if !strings.HasPrefix(xmlForm, "<RSAKeyValue><Modulus>") || !strings.HasSuffix(xmlForm, "</Exponent></RSAKeyValue>") ||
		!strings.Contains(xmlForm, "<Exponent>AQAB</Exponent>") {
		t.Errorf("XML form %s", xmlForm)
	}
	pemForm := mustPublicPEM(t, pub)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(pub)})
	// .NET writes the private form with more elements and may indent; only Modulus and
	// Exponent are read.
	dotnet := "<RSAKeyValue>\n  <Modulus>" + strings.TrimSuffix(strings.TrimPrefix(xmlForm, "<RSAKeyValue><Modulus>"), "</Exponent></RSAKeyValue>") +
		"</Exponent>\n  <P>AQ==</P>\n</RSAKeyValue>"
	for name, data := range map[string]string{"xml": xmlForm, "pem": string(pemForm), "pkcs1 pem": string(pkcs1), "indented .NET xml": dotnet} {
		got, err := ParsePublicKey([]byte("\n" + data + "\n"))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !got.Equal(pub) {
			t.Errorf("%s: parsed a different key", name)
		}
	}
	// A log written for the parsed XML key decodes with the private key.
	parsed, _ := ParsePublicKey([]byte(xmlForm))
	log, err := Record(nil, parsed, 8, -1, 5, true)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := (&Decoder{Keys: testRing(t, key)}).DecodeRaw(context.Background(), log, NewestFirst, nil)
	if err != nil || len(entries) != 1 || !entries[0].Decrement || entries[0].ObjectID != 8 || entries[0].Amount != 8 {
		t.Fatalf("log for the XML key: %v, %v", entries, err)
	}

	for name, data := range map[string]string{
		"empty":         "",
		"bad base64":    "<RSAKeyValue><Modulus>!!</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
		"small modulus": "<RSAKeyValue><Modulus>AQAB</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
		"even exponent": strings.Replace(xmlForm, "AQAB", "AQAA", 1),
		"private pem":   string(mustPrivatePEM(t, key)),
	} {
		if _, err := ParsePublicKey([]byte(data)); err == nil {
			t.Errorf("%s parsed as a public key", name)
		}
	}
}

func mustPrivatePEM(t *testing.T, key *rsa.PrivateKey) []byte {
	t.Helper()
	b, err := MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
