package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
)

// globalFlags are the settings every command shares.
type globalFlags struct {
	Server     string
	DataDir    string
	AdminToken string
}

func (g *globalFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.Server, "server", "http://127.0.0.1:8080", "Tally server for client commands (TALLY_SERVER)")
	fs.StringVar(&g.DataDir, "data-dir", "./tally-data", "data directory (TALLY_DATA_DIR)")
	fs.StringVar(&g.AdminToken, "admin-token", "", "admin credential (TALLY_ADMIN_TOKEN); default: read <data-dir>/admin.token")
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
