// Package backup holds the archive format of `tally backup` and `tally restore`: a gzip-compressed
// tar of what a data directory needs to serve again, written while the server runs, and its
// restoration into a fresh data directory.
//
// The archive holds, in this order:
//
//	projection.json               an earlier build's projection snapshot (if any), read before the store is copied
//	readmodels/state.db           the current-state projection (if any), copied before the store is copied
//	admin.token                   the admin credential (if any)
//	rsa-private.pem               the server's RSA keys (the current one, then rsa-private-*.pem)
//	events/events.db              a consistent copy of the event store (SQLite VACUUM INTO)
//	MANIFEST.json                 last: format, the store's position, and each file's size and SHA-256
//
// The snapshot is read before the store is copied, so its position is never past the copy's:
// the restored server loads it and catches up from the restored events. Every file is stored
// and restored with mode 0600 (directories 0700): the archive holds every license key and the
// server's secrets. An archive without its manifest, or whose files do not match it, is
// refused: a backup cut short is never mistaken for a whole one.
package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Format is the archive format version this build writes and reads.
const Format = 1

// Names inside the archive (and the data directory).
const (
	ManifestName = "MANIFEST.json"
	StoreName    = "events/events.db"
	SnapshotName = "projection.json"
	StateName    = "readmodels/state.db"
	TokenName    = "admin.token"
)

// TempPattern names the store's copy while a backup is made (in the data directory, as a glob).
const TempPattern = ".backup-*.db"

// keyName matches the RSA key files of a data directory.
var keyName = regexp.MustCompile(`^rsa-private(-[A-Za-z0-9._-]+)?\.pem$`)

// Manifest describes an archive; it is its last entry.
type Manifest struct {
	Format int `json:"format"`
	// Position is the global position of the last event in the store's copy.
	Position uint64    `json:"position"`
	Created  time.Time `json:"created"`
	Files    []File    `json:"files"`
	// Notes say what the operator must keep besides the archive (keys given to the server from
	// outside its data directory).
	Notes []string `json:"notes,omitempty"`
}

// File is one file of an archive.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Source is what Write backs up.
type Source struct {
	// DataDir is the server's data directory: its snapshot, admin token and RSA keys are read
	// from there, and the store's copy is made there (it is private and on the store's disk).
	DataDir string
	// CopyStore writes a consistent copy of the event store to path (which does not exist) and
	// returns the position of its last event.
	CopyStore func(ctx context.Context, path string) (uint64, error)
	// CopyState, if not nil, writes a consistent copy of the current-state projection's
	// database to path and reports whether there was one. Write calls it before CopyStore, so
	// that the copy's checkpoint is never past the store's copy.
	CopyState func(ctx context.Context, path string) (bool, error)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Notes go into the manifest as they are.
	Notes []string
}

// Write writes an archive of src to w and returns its manifest.
func Write(ctx context.Context, w io.Writer, src Source) (Manifest, error) {
	now := time.Now
	if src.Now != nil {
		now = src.Now
	}
	// The small files first, the snapshot before the store is copied (see the package doc).
	keys, err := dataDirKeys(src.DataDir)
	if err != nil {
		return Manifest{}, err
	}
	small := append([]string{SnapshotName, TokenName}, keys...)
	contents := map[string][]byte{}
	var present []string
	for _, name := range small {
		b, err := os.ReadFile(filepath.Join(src.DataDir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Manifest{}, fmt.Errorf("backup: %w", err)
		}
		contents[name] = b
		present = append(present, name)
	}
	var stateTmp string
	if src.CopyState != nil {
		stateTmp = filepath.Join(src.DataDir, strings.Replace(TempPattern, "*", uuid.NewString(), 1))
		defer os.Remove(stateTmp)
		ok, err := src.CopyState(ctx, stateTmp)
		if err != nil {
			return Manifest{}, fmt.Errorf("backup: projection state: %w", err)
		}
		if !ok {
			stateTmp = ""
		}
	}
	tmp := filepath.Join(src.DataDir, strings.Replace(TempPattern, "*", uuid.NewString(), 1))
	defer os.Remove(tmp)
	position, err := src.CopyStore(ctx, tmp)
	if err != nil {
		return Manifest{}, err
	}
	m := Manifest{Format: Format, Position: position, Created: now().UTC(), Notes: src.Notes}

	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, name := range present {
		f, err := addFile(tw, name, int64(len(contents[name])), m.Created, bytes.NewReader(contents[name]))
		if err != nil {
			return Manifest{}, err
		}
		m.Files = append(m.Files, f)
	}
	if stateTmp != "" {
		f, err := addCopy(tw, StateName, stateTmp, m.Created)
		if err != nil {
			return Manifest{}, err
		}
		m.Files = append(m.Files, f)
	}
	db, err := os.Open(tmp)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	defer db.Close()
	fi, err := db.Stat()
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	f, err := addFile(tw, StoreName, fi.Size(), m.Created, db)
	if err != nil {
		return Manifest{}, err
	}
	m.Files = append(m.Files, f)
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: manifest: %w", err)
	}
	if _, err := addFile(tw, ManifestName, int64(len(mb)), m.Created, bytes.NewReader(mb)); err != nil {
		return Manifest{}, err
	}
	if err := errors.Join(tw.Close(), gz.Close()); err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	return m, nil
}

// addCopy adds the file at path to the archive under name.
func addCopy(tw *tar.Writer, name, path string, mod time.Time) (File, error) {
	r, err := os.Open(path)
	if err != nil {
		return File{}, fmt.Errorf("backup: %w", err)
	}
	defer r.Close()
	fi, err := r.Stat()
	if err != nil {
		return File{}, fmt.Errorf("backup: %w", err)
	}
	return addFile(tw, name, fi.Size(), mod, r)
}

// dataDirKeys lists the RSA key files of a data directory, the current one first.
func dataDirKeys(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.Type().IsRegular() && keyName.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		// rsa-private.pem sorts before rsa-private-*.pem ('.' < '-' is false, so say it).
		if (out[i] == "rsa-private.pem") != (out[j] == "rsa-private.pem") {
			return out[i] == "rsa-private.pem"
		}
		return out[i] < out[j]
	})
	return out, nil
}

// addFile writes one owner-only file to the archive and returns its manifest entry.
func addFile(tw *tar.Writer, name string, size int64, mod time.Time, r io.Reader) (File, error) {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o600, ModTime: mod, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return File{}, fmt.Errorf("backup: %s: %w", name, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tw, h), r)
	if err != nil {
		return File{}, fmt.Errorf("backup: %s: %w", name, err)
	}
	if n != size {
		return File{}, fmt.Errorf("backup: %s: %d bytes, not %d", name, n, size)
	}
	return File{Name: name, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Check reads a whole archive and returns its manifest if every file matches it.
func Check(r io.Reader) (Manifest, error) {
	return read(r, func(string) (io.WriteCloser, error) { return discard{}, nil })
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) Close() error                { return nil }

// Restore makes the data directory dir from an archive. dir must not exist or be empty; it is
// created with mode 0700 and every file with mode 0600. If the archive is refused, everything
// Restore wrote is removed again.
func Restore(r io.Reader, dir string) (m Manifest, err error) {
	created, err := prepareEmptyDir(dir)
	if err != nil {
		return Manifest{}, err
	}
	var written []string
	defer func() {
		if err == nil {
			return
		}
		for i := len(written) - 1; i >= 0; i-- {
			_ = os.Remove(written[i])
		}
		if created {
			_ = os.Remove(dir)
		}
	}()
	m, err = read(r, func(name string) (io.WriteCloser, error) {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if sub := filepath.Dir(path); sub != dir {
			if err := os.Mkdir(sub, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("restore: %w", err)
			} else if err == nil {
				written = append(written, sub)
			}
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		written = append(written, path)
		return syncCloser{f}, nil
	})
	if err != nil {
		return Manifest{}, err
	}
	// The files are synced as they are written; their names too.
	for _, d := range []string{filepath.Join(dir, filepath.Dir(StoreName)), filepath.Join(dir, filepath.Dir(StateName)), dir} {
		if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
			continue // no state in this archive
		}
		if err := SyncDir(d); err != nil {
			return Manifest{}, err
		}
	}
	return m, nil
}

// SyncDir makes the names in a directory durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// syncCloser makes a restored file durable before it counts as written.
type syncCloser struct{ f *os.File }

func (s syncCloser) Write(p []byte) (int, error) { return s.f.Write(p) }
func (s syncCloser) Close() error                { return errors.Join(s.f.Sync(), s.f.Close()) }

// prepareEmptyDir creates dir (0700) or checks that it is an empty directory, which it then
// makes owner-only; created says whether it made it.
func prepareEmptyDir(dir string) (created bool, err error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("restore: %w", err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("restore: %w", err)
	case len(entries) > 0:
		return false, fmt.Errorf("restore: %s is not empty: restore makes a new data directory, never over an existing one", dir)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return false, fmt.Errorf("restore: %w", err)
	}
	return false, nil
}

// allowedName says whether an archive may hold a file of this name: the fixed names and RSA
// key files, nothing with a path of its own (no "..", no absolute paths).
func allowedName(name string) bool {
	switch name {
	case StoreName, SnapshotName, StateName, TokenName:
		return true
	}
	return keyName.MatchString(name)
}

// read walks an archive, writing each file through open, and checks it against the manifest.
func read(r io.Reader, open func(name string) (io.WriteCloser, error)) (Manifest, error) {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return Manifest{}, fmt.Errorf("backup archive: %w", err)
	}
	tr := tar.NewReader(gz)
	seen := map[string]File{}
	var manifest *Manifest
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Manifest{}, fmt.Errorf("backup archive: %w (cut short?)", err)
		}
		if manifest != nil {
			return Manifest{}, fmt.Errorf("backup archive: %q after the manifest", hdr.Name)
		}
		if hdr.Typeflag != tar.TypeReg {
			return Manifest{}, fmt.Errorf("backup archive: %q is not a regular file", hdr.Name)
		}
		if hdr.Name == ManifestName {
			var m Manifest
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&m); err != nil {
				return Manifest{}, fmt.Errorf("backup archive: manifest: %w", err)
			}
			manifest = &m
			continue
		}
		if !allowedName(hdr.Name) {
			return Manifest{}, fmt.Errorf("backup archive: unexpected file %q", hdr.Name)
		}
		if _, dup := seen[hdr.Name]; dup {
			return Manifest{}, fmt.Errorf("backup archive: %q twice", hdr.Name)
		}
		w, err := open(hdr.Name)
		if err != nil {
			return Manifest{}, err
		}
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(w, h), tr)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return Manifest{}, fmt.Errorf("backup archive: %s: %w (cut short?)", hdr.Name, err)
		}
		seen[hdr.Name] = File{Name: hdr.Name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}
	}
	if err := gz.Close(); err != nil {
		return Manifest{}, fmt.Errorf("backup archive: %w", err)
	}
	if manifest == nil {
		return Manifest{}, errors.New("backup archive: no manifest: the archive is incomplete")
	}
	if manifest.Format != Format {
		return Manifest{}, fmt.Errorf("backup archive: format %d, this build reads %d", manifest.Format, Format)
	}
	if len(manifest.Files) != len(seen) {
		return Manifest{}, fmt.Errorf("backup archive: the manifest lists %d files, the archive holds %d", len(manifest.Files), len(seen))
	}
	for _, want := range manifest.Files {
		if got, ok := seen[want.Name]; !ok || got != want {
			return Manifest{}, fmt.Errorf("backup archive: %s does not match the manifest", want.Name)
		}
	}
	if _, ok := seen[StoreName]; !ok {
		return Manifest{}, fmt.Errorf("backup archive: no %s", StoreName)
	}
	return *manifest, nil
}
