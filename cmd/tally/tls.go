package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// certificate is a listener's TLS certificate, read from its files at start and again on
// reload. Handshakes take the current one (tls.Config.GetCertificate), so a reload changes what
// new connections see and leaves open ones as they are.
type certificate struct {
	certFile, keyFile string
	current           atomic.Pointer[tls.Certificate]
}

// loadCertificate reads a certificate and its key; flag names the flags for the error.
func loadCertificate(certFile, keyFile, flag string) (*certificate, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("%s-cert and %s-key go together: give both or neither", flag, flag)
	}
	c := &certificate{certFile: certFile, keyFile: keyFile}
	if err := c.reload(); err != nil {
		return nil, fmt.Errorf("%s-cert/%s-key: %w", flag, flag, err)
	}
	return c, nil
}

// reload reads the files again; on failure the certificate in use stays.
func (c *certificate) reload() error {
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load %s and %s: %w", c.certFile, c.keyFile, err)
	}
	c.current.Store(&pair)
	return nil
}

// serverConfig is the TLS configuration of a listener serving c: TLS 1.2 at least, Go's
// default cipher suites (which offer no insecure ones).
func (c *certificate) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.current.Load(), nil
		},
	}
}

// listenerCertificate loads the certificate of a listener, or nil when it serves plain HTTP.
func listenerCertificate(certFile, keyFile, flag string) (*certificate, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	return loadCertificate(certFile, keyFile, flag)
}

// clientTLSConfig is the TLS configuration of the client commands: the system's roots, plus
// the CA certificates in caFile if given (PEM), for an admin listener with a private CA or a
// self-signed certificate.
func clientTLSConfig(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("--ca-cert: " + caFile + " holds no PEM certificate")
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}
