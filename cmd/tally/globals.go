package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// globalFlags are the settings every command shares.
type globalFlags struct {
	Server     string
	DataDir    string
	AdminToken string
	CACert     string
}

func (g *globalFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.Server, "server", "http://127.0.0.1:8081", "Tally admin listener for client commands (TALLY_SERVER)")
	fs.StringVar(&g.DataDir, "data-dir", "./tally-data", "data directory (TALLY_DATA_DIR)")
	fs.StringVar(&g.AdminToken, "admin-token", "", "admin credential (TALLY_ADMIN_TOKEN); default: read <data-dir>/admin.token")
	fs.StringVar(&g.CACert, "ca-cert", "", "PEM file of CA certificates the client commands trust besides the system's, for an https --server with a private CA or a self-signed certificate (TALLY_CA_CERT)")
}

// adminTokenFile is where tally serve keeps a generated admin credential.
func adminTokenFile(dataDir string) string { return filepath.Join(dataDir, "admin.token") }

// adminToken returns the admin credential: the flag or TALLY_ADMIN_TOKEN, else the file that
// tally serve wrote in the data directory.
func (g *globalFlags) adminToken() (string, error) {
	if g.AdminToken != "" {
		return g.AdminToken, nil
	}
	b, err := os.ReadFile(adminTokenFile(g.DataDir))
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no admin token: set TALLY_ADMIN_TOKEN or point --data-dir at the server's data directory")
	}
	if err != nil {
		return "", fmt.Errorf("read admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		// An empty credential would switch the admin API off without a word.
		return "", fmt.Errorf("%s is empty", adminTokenFile(g.DataDir))
	}
	return tok, nil
}

// httpClient is the client commands' HTTP client: it trusts --ca-cert besides the system's
// roots.
func (g *globalFlags) httpClient(timeout time.Duration) (*http.Client, error) {
	tlsConfig, err := clientTLSConfig(g.CACert)
	if err != nil {
		return nil, err
	}
	if tlsConfig == nil {
		return &http.Client{Timeout: timeout}, nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	return &http.Client{Timeout: timeout, Transport: tr}, nil
}
