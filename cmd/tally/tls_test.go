package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 named cn, and its key, to
// certPath and keyPath, and returns the certificate's PEM.
func writeSelfSigned(t *testing.T, certPath, keyPath, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPEM
}

// TestTLSListenersReloadOnHangup runs the real server with TLS on both listeners: TLS 1.1 is
// refused; a connection opened before SIGHUP keeps working on the old certificate after it,
// while a handshake after it sees the new one; the client commands reach the admin listener
// when told to trust its certificate (--ca-cert) and refuse it otherwise.
func TestTLSListenersReloadOnHangup(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "public.crt"), filepath.Join(dir, "public.key")
	adminCert, adminKey := filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	oldPEM := writeSelfSigned(t, cert, key, "old")
	adminPEM := writeSelfSigned(t, adminCert, adminKey, "admin")

	dataDir := privateTempDir(t)
	g := &globalFlags{DataDir: dataDir}
	reloaded := make(chan error, 1)
	cfg := serveConfig{Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute,
		TLSCert: cert, TLSKey: key, AdminTLSCert: adminCert, AdminTLSKey: adminKey,
		onCertReload: func(err error) { reloaded <- err }}
	logs := &syncBuffer{}
	urls, stop := startServe(t, g, cfg, logs)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	if !strings.HasPrefix(urls.Public, "https://") || !strings.HasPrefix(urls.Admin, "https://") {
		t.Fatalf("listeners %v", urls)
	}
	publicAddr := strings.TrimPrefix(urls.Public, "https://")

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(oldPEM)
	dial := func(cfg *tls.Config) (*tls.Conn, error) {
		return tls.Dial("tcp", publicAddr, cfg)
	}
	if c, err := dial(&tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	before, err := dial(&tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	get := func(c *tls.Conn) int {
		t.Helper()
		if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n")); err != nil {
			t.Fatalf("write on an open connection: %v", err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("read on an open connection: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get(before); s != http.StatusOK {
		t.Fatalf("/healthz: %d", s)
	}

	// A new certificate in the files, then SIGHUP.
	newPEM := writeSelfSigned(t, cert, key, "new")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := <-reloaded; err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !strings.Contains(logs.String(), "certificates reloaded") {
		t.Fatal("the reload is not logged")
	}
	// The connection opened before still works, on the certificate it was opened with.
	if s := get(before); s != http.StatusOK {
		t.Fatalf("/healthz on the connection opened before the reload: %d", s)
	}
	if cn := before.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "old" {
		t.Fatalf("the open connection's certificate is %q", cn)
	}
	// A new handshake sees the new certificate: it fails against the old root alone and
	// succeeds against the new one.
	if c, err := dial(&tls.Config{RootCAs: roots}); err == nil {
		c.Close()
		t.Fatal("a new handshake still sees the old certificate")
	}
	newRoots := x509.NewCertPool()
	newRoots.AppendCertsFromPEM(newPEM)
	after, err := dial(&tls.Config{RootCAs: newRoots})
	if err != nil {
		t.Fatalf("a new handshake against the new certificate: %v", err)
	}
	if cn := after.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "new" {
		t.Fatalf("the new connection's certificate is %q", cn)
	}
	if v := after.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Fatalf("TLS version %x", v)
	}
	after.Close()

	// A reload from a broken file keeps the certificate in use.
	if err := os.WriteFile(cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := <-reloaded; err == nil {
		t.Fatal("a reload from a broken file succeeded")
	}
	if c, err := dial(&tls.Config{RootCAs: newRoots}); err != nil {
		t.Fatalf("after a failed reload: %v", err)
	} else {
		c.Close()
	}

	// The client commands on the TLS admin listener: with --ca-cert, and refused without.
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, adminPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "--server", urls.Admin, "--data-dir", dataDir, "--ca-cert", caFile, "product", "create", "--name", "App"); err != nil || strings.TrimSpace(out) == "" {
		t.Fatalf("product create with --ca-cert: %q %v", out, err)
	}
	t.Setenv("TALLY_CA_CERT", caFile)
	if _, err := run(t, "--server", urls.Admin, "--data-dir", dataDir, "value", "1"); err != nil && strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an audit command with TALLY_CA_CERT: %v", err)
	}
	t.Setenv("TALLY_CA_CERT", "")
	if _, err := run(t, "--server", urls.Admin, "--data-dir", dataDir, "product", "list"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("product list without --ca-cert: %v, want a certificate error", err)
	}
}

// TestTLSFilesRefusedAtStart: a missing or broken certificate or key, or one without the
// other, stops tally serve before it opens anything, with the flag and file named.
func TestTLSFilesRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeSelfSigned(t, cert, key, "x")
	otherCert, otherKey := filepath.Join(dir, "c2.pem"), filepath.Join(dir, "k2.pem")
	writeSelfSigned(t, otherCert, otherKey, "y")
	broken := filepath.Join(dir, "broken.pem")
	if err := os.WriteFile(broken, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		cfg  serveConfig
		want string
	}{
		{"cert without key", serveConfig{TLSCert: cert}, "--tls-cert and --tls-key go together"},
		{"admin key without cert", serveConfig{AdminTLSKey: key}, "--admin-tls-cert and --admin-tls-key go together"},
		{"missing file", serveConfig{TLSCert: filepath.Join(dir, "nope.pem"), TLSKey: key}, "nope.pem"},
		{"broken certificate", serveConfig{AdminTLSCert: broken, AdminTLSKey: key}, "--admin-tls-cert/--admin-tls-key"},
		{"key of another certificate", serveConfig{TLSCert: cert, TLSKey: otherKey}, "private key does not match public key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			c.cfg.Addr, c.cfg.AdminAddr, c.cfg.Store, c.cfg.UploadLease = "127.0.0.1:0", "127.0.0.1:0", "embedded", time.Minute
			err := serve(t.Context(), slog.New(slog.DiscardHandler), &globalFlags{DataDir: dataDir}, c.cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Fatalf("the data directory was created before the certificates were checked: %v", err)
			}
		})
	}
}

// TestCertificateReload reloads a certificate directly: GetCertificate hands out the new one
// after a reload, and the old one after a reload that fails.
func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeSelfSigned(t, certFile, keyFile, "first")
	c, err := loadCertificate(certFile, keyFile, "--tls")
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.serverConfig()
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Fatalf("MinVersion %x", cfg.MinVersion)
	}
	name := func() string {
		t.Helper()
		got, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(got.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	if n := name(); n != "first" {
		t.Fatalf("serves %q", n)
	}
	writeSelfSigned(t, certFile, keyFile, "second")
	if err := c.reload(); err != nil {
		t.Fatal(err)
	}
	if n := name(); n != "second" {
		t.Fatalf("after a reload, serves %q", n)
	}
	if err := os.WriteFile(keyFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.reload(); err == nil || !strings.Contains(err.Error(), keyFile) {
		t.Fatalf("reload from an empty key file: %v", err)
	}
	if n := name(); n != "second" {
		t.Fatalf("after a failed reload, serves %q", n)
	}
}

// TestServeFlagsReadTheirVariables: the listener, TLS and logging flags of serve read their
// TALLY_* variables, and a flag on the command line wins.
func TestServeFlagsReadTheirVariables(t *testing.T) {
	env := map[string]string{
		"TALLY_ADDR": "127.0.0.1:1", "TALLY_ADMIN_ADDR": "127.0.0.1:2",
		"TALLY_TLS_CERT": "p.crt", "TALLY_TLS_KEY": "p.key",
		"TALLY_ADMIN_TLS_CERT": "a.crt", "TALLY_ADMIN_TLS_KEY": "a.key",
		"TALLY_ACCESS_LOG": "false", "TALLY_WRITE_PROBE_INTERVAL": "3s", "TALLY_CA_CERT": "ca.pem",
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	root := newRootCommand()
	serveCmd, _, err := root.Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	if err := serveCmd.ParseFlags([]string{"--admin-addr", "127.0.0.1:3"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(serveCmd); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"addr": "127.0.0.1:1", "admin-addr": "127.0.0.1:3", "tls-cert": "p.crt", "tls-key": "p.key",
		"admin-tls-cert": "a.crt", "admin-tls-key": "a.key", "access-log": "false", "write-probe-interval": "3s",
		"ca-cert": "ca.pem",
	}
	for flag, v := range want {
		f := serveCmd.Flags().Lookup(flag)
		if f == nil {
			f = serveCmd.InheritedFlags().Lookup(flag)
		}
		if f == nil || f.Value.String() != v {
			t.Errorf("--%s: got %v, want %q", flag, f, v)
		}
	}
}
