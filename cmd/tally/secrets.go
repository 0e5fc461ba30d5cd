package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tallyledger/tally/adapters/usagelog"
)

// Secrets at rest. The data directory holds every license key string (in the event store), the
// admin token and the RSA private keys, so tally serve refuses to start when the directory or a
// secret in it is open to group or others: it names the file and the chmod that fixes it. The
// store's own files are created owner-only by adapters/embedded whatever the umask.

// looseBits are the permission bits a private file or directory must not have: any access by
// group or others (a writable secret could be replaced, a readable one copied).
const looseBits fs.FileMode = 0o077

// checkPrivateDir refuses a data directory that group or others may read, write or enter, and
// one given as a symlink: the link's own path says nothing of who may reach the data, so the
// operator names the directory itself.
func checkPrivateDir(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("data directory %s is a symlink: name the directory itself (--data-dir %s)", path, shellQuote(resolved(path)))
	}
	if !fi.IsDir() {
		return fmt.Errorf("data directory %s is not a directory", path)
	}
	if fi.Mode().Perm()&looseBits != 0 {
		return fmt.Errorf("data directory %s has mode %04o: group and others must have no access to it (it holds license keys and secrets); run: chmod 700 %s",
			path, fi.Mode().Perm(), shellQuote(path))
	}
	return nil
}

// checkSecretFile refuses a secret file that is a symlink or that group or others may access.
// A missing file is not an error: the caller creates it.
func checkSecretFile(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("secret file: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symlink (to %s): a secret must be a regular file (its mode is what protects it); name the file itself or replace the link with it, and run: chmod 600 %s",
			path, resolved(path), shellQuote(resolved(path)))
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&looseBits != 0 {
		return fmt.Errorf("%s has mode %04o: a secret must be readable by its owner only; run: chmod 600 %s",
			path, fi.Mode().Perm(), shellQuote(path))
	}
	return nil
}

// resolved is where a symlink leads, for a message (the link itself when that cannot be said).
func resolved(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		return p
	}
	return path
}

// checkDataDirSecrets checks the data directory and the secrets tally serve reads: the admin
// token file and the RSA keys in the data directory, and the --rsa-key files.
func checkDataDirSecrets(dataDir string, rsaKeyFiles []string) error {
	if err := checkPrivateDir(dataDir); err != nil {
		return err
	}
	inDir := []string{adminTokenFile(dataDir), filepath.Join(dataDir, usagelog.CurrentKeyFile)}
	older, err := filepath.Glob(filepath.Join(dataDir, "rsa-private-*.pem"))
	if err != nil {
		return fmt.Errorf("older RSA keys: %w", err)
	}
	sort.Strings(older)
	for _, p := range append(inDir, older...) {
		if err := checkSecretFile(p); err != nil {
			return err
		}
	}
	for _, p := range rsaKeyFiles {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			continue // loading it says so
		}
		if err := checkSecretFile(p); err != nil {
			return fmt.Errorf("--rsa-key: %w", err)
		}
	}
	return nil
}

// Admin token strength. The admin token is a bearer credential (RFC 6750): it must be a
// b64token, that is letters, digits and - . _ ~ + / followed by optional = padding, and it must
// carry at least 128 bits if its characters were random:
//   - made of hexadecimal digits only: at least 32 of them (4 bits each);
//   - otherwise: at least 22 characters before any padding (6 bits each, base64);
//   - and at least minDistinctTokenChars different characters, which refuses "aaaa…" or
//     "0000…" (a random token of that length has fewer with probability below 1e-7).
//
// tally serve generates 32 random bytes as unpadded base64url (43 characters).
const (
	minHexTokenChars      = 32
	minBase64TokenChars   = 22
	minDistinctTokenChars = 8
)

// checkAdminTokenStrength refuses an admin token that cannot hold 128 bits of entropy; source
// says where it came from, for the message.
func checkAdminTokenStrength(token, source string) error {
	body := strings.TrimRight(token, "=")
	hexOnly := true
	distinct := map[rune]bool{}
	for _, r := range body {
		switch {
		case r >= '0' && r <= '9', r >= 'a' && r <= 'f', r >= 'A' && r <= 'F':
		case r >= 'g' && r <= 'z', r >= 'G' && r <= 'Z', strings.ContainsRune("-._~+/", r):
			hexOnly = false
		default:
			return fmt.Errorf("admin token from %s: character %q is not allowed: use letters, digits and - . _ ~ + / (a bearer token), e.g. the output of: openssl rand -base64 32", source, r)
		}
		distinct[r] = true
	}
	const advice = "at least 128 bits are needed: 32 hex digits or 22 base64 characters or more, e.g. the output of: openssl rand -base64 32"
	switch {
	case hexOnly && len(body) < minHexTokenChars:
		return fmt.Errorf("admin token from %s is too weak: %d hex digits; %s", source, len(body), advice)
	case len(body) < minBase64TokenChars:
		return fmt.Errorf("admin token from %s is too weak: %d characters; %s", source, len(body), advice)
	case len(distinct) < minDistinctTokenChars:
		return fmt.Errorf("admin token from %s is too weak: only %d different characters, so it is not random; %s", source, len(distinct), advice)
	}
	return nil
}

// shellQuote quotes a path for the chmod a message suggests, when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+,:@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
