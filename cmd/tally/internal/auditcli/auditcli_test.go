package auditcli_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/tallyledger/tally/adapters/auditapi"
	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/adapters/httpapi/openapi/openapitest"
	"github.com/tallyledger/tally/cmd/tally/internal/auditcli"
	"github.com/tallyledger/tally/domain/eventstore"
	"github.com/tallyledger/tally/domain/state"
	"github.com/tallyledger/tally/projections"
	"github.com/tallyledger/tally/projections/audittest"
	"github.com/tallyledger/tally/projections/readmodel"
)

// root builds a command tree like tally's, with the same global flags, around the audit
// commands (cmd/tally's own root also wires serve).
func root() *cobra.Command {
	var server, dataDir, adminToken string
	r := &cobra.Command{Use: "tally", SilenceUsage: true, SilenceErrors: true}
	r.PersistentFlags().StringVar(&server, "server", "", "")
	r.PersistentFlags().StringVar(&dataDir, "data-dir", "", "")
	r.PersistentFlags().StringVar(&adminToken, "admin-token", "", "")
	c := auditcli.Client{Server: func() string { return server }, AdminToken: func() (string, error) { return adminToken, nil }}
	l := auditcli.Local{
		DataDir: func() string { return dataDir },
		Open: func(ctx context.Context, kind, _ string) (eventstore.Store, error) {
			if kind != "embedded" {
				return nil, errors.New("only the embedded store in these tests")
			}
			return embedded.Open(ctx, filepath.Join(dataDir, "events"))
		},
		InUse: func(err error) bool { return errors.Is(err, embedded.ErrLocked) },
	}
	r.AddCommand(auditcli.NewHistoryCommand(c), auditcli.NewValueCommand(c), auditcli.NewUsageCommand(c),
		auditcli.NewCorrectCommand(c), auditcli.NewReplayCommand(l), auditcli.NewVerifyCommand(l, c))
	return r
}

// run executes a command line in-process and returns its output and error (the exit status).
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	r := root()
	var out bytes.Buffer
	r.SetOut(&out)
	r.SetErr(&out)
	r.SetArgs(args)
	err := r.ExecuteContext(context.Background())
	return out.String(), err
}

// seededDataDir leaves a stopped data directory: events and a persisted projection.
func seededDataDir(t *testing.T) (string, *audittest.Workload) {
	t.Helper()
	dir := t.TempDir()
	store, err := embedded.Open(context.Background(), filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	env := audittest.Start(t, store, filepath.Join(dir, auditcli.SnapshotFile))
	w := audittest.Seed(t, env, rand.New(rand.NewPCG(11, 12)), 120)
	env.Stop() // persists the snapshot
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, w
}

func TestVerifyPassesOnAHealthyDataDirAndNamesATamperedObject(t *testing.T) {
	dir, w := seededDataDir(t)
	out, err := run(t, "verify", "--data-dir", dir)
	if err != nil {
		t.Fatalf("healthy: %v\n%s", err, out)
	}
	if !strings.HasPrefix(out, "ok: ") {
		t.Errorf("healthy output: %s", out)
	}
	// Tamper with the persisted projection: one object's value.
	path := filepath.Join(dir, auditcli.SnapshotFile)
	target := strconv.FormatInt(w.Objects[2].ID, 10)
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	res, err := db.Exec(`UPDATE objects SET record = json_set(record, '$.intValue', json_extract(record, '$.intValue') + 1000) WHERE id = ?`, w.Objects[2].ID)
	if err == nil {
		var n int64
		if n, err = res.RowsAffected(); err == nil && n != 1 {
			err = fmt.Errorf("%d rows tampered with", n)
		}
	}
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "verify", "--data-dir", dir)
	if err == nil {
		t.Fatalf("tampered projection verified:\n%s", out)
	}
	if !strings.Contains(out, "data object "+target+": intValue") {
		t.Errorf("output does not name object %s:\n%s", target, out)
	}
	// replay writes a fresh snapshot from the events; verify passes again.
	out, err = run(t, "replay", "--data-dir", dir)
	if err != nil || !strings.HasPrefix(out, "replayed ") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	if out, err := run(t, "verify", "--data-dir", dir); err != nil {
		t.Fatalf("after replay: %v\n%s", err, out)
	}
	st, err := projections.LoadSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range w.Objects {
		got, ok := st.Object(o.ID)
		if !ok || int64(got.IntValue) != w.Final[o.ID] {
			t.Errorf("replayed object %d: %+v, want value %d", o.ID, got, w.Final[o.ID])
		}
	}
}

func TestVerifyWithoutASnapshotChecksTheEventsAndRefusesALockedDir(t *testing.T) {
	dir, _ := seededDataDir(t)
	if err := os.Remove(filepath.Join(dir, auditcli.SnapshotFile)); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "verify", "--data-dir", dir)
	if err != nil || !strings.Contains(out, "checked the events only") {
		t.Errorf("no snapshot: %v\n%s", err, out)
	}
	store, err := embedded.Open(context.Background(), filepath.Join(dir, "events"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := run(t, "replay", "--data-dir", dir); !errors.Is(err, embedded.ErrLocked) {
		t.Errorf("replay of a data dir in use: %v, want ErrLocked", err)
	}
}

func TestClientCommandsAgainstTheAuditAPI(t *testing.T) {
	store, err := embedded.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	env := audittest.Start(t, store, "")
	w := audittest.Seed(t, env, rand.New(rand.NewPCG(13, 14)), 80)
	const admin = "the-admin-credential"
	// The server answers usage and values from its read model, as tally serve does.
	modelCtx, stopModel := context.WithCancel(context.Background())
	model, err := readmodel.Open(modelCtx, store, filepath.Join(t.TempDir(), "usage.db"), readmodel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	modelDone := make(chan error, 1)
	go func() { modelDone <- model.Run(modelCtx) }()
	t.Cleanup(func() {
		stopModel()
		<-modelDone
		_ = model.Close()
	})
	h, err := auditapi.New(auditapi.Config{Store: store, Ledger: env.Ledger, AdminToken: admin, ReadModel: model})
	if err != nil {
		t.Fatal(err)
	}
	// Every answer the commands get is validated against the OpenAPI document.
	srv := httptest.NewServer(openapitest.Handler(t, h))
	t.Cleanup(srv.Close)
	global := []string{"--server", srv.URL, "--admin-token", admin}
	obj := w.Objects[0]
	id := strconv.FormatInt(obj.ID, 10)

	out, err := run(t, append([]string{"correct", "--object", id, "--amount", "-2", "--reason", "duplicate log"}, global...)...)
	if err != nil || !strings.Contains(out, "corrected data object "+id+" by -2") {
		t.Fatalf("correct: %v\n%s", err, out)
	}
	final := w.Final[obj.ID] - 2

	out, err = run(t, append([]string{"history", "--object", id, "--format", "json"}, global...)...)
	if err != nil {
		t.Fatalf("history: %v\n%s", err, out)
	}
	var hist projections.ObjectHistory
	if err := json.Unmarshal([]byte(out), &hist); err != nil {
		t.Fatal(err)
	}
	if last := hist.Entries[len(hist.Entries)-1]; last.Correction != "duplicate log" || last.Amount != -2 {
		t.Errorf("last history entry %+v", last)
	}
	out, err = run(t, append([]string{"history", "--object", id}, global...)...)
	if err != nil || !strings.Contains(out, "correction: duplicate log") {
		t.Errorf("history table: %v\n%s", err, out)
	}

	out, err = run(t, append([]string{"value", "--object", id}, global...)...)
	if err != nil || !strings.Contains(out, ": "+strconv.FormatInt(final, 10)+"\n") {
		t.Errorf("value now: %v\n%s (want %d)", err, out, final)
	}

	out, err = run(t, append([]string{"usage", "--from", "2024-12-01", "--to", "2026-01-31", "--tz", "Europe/Stockholm", "--by", "month", "--key", strconv.FormatInt(obj.KeyID, 10), "--format", "csv"}, global...)...)
	if err != nil {
		t.Fatalf("usage: %v\n%s", err, out)
	}
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(recs) < 2 {
		t.Fatalf("usage csv: %v, %d records", err, len(recs))
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	// On the usage axis over a range covering every time the workload used, the increments
	// minus decrements of an object add up to its ops (corrections apart, which the CLI's own
	// correction was timed now, outside the range).
	var incs, decs int64
	for _, op := range w.Ops {
		if op.ObjectID != obj.ID || !op.Counted {
			continue
		}
		switch {
		case op.Kind == audittest.OpIncrement || (op.Kind == audittest.OpUpload && op.Delta > 0):
			incs += op.Delta
		case op.Kind == audittest.OpDecrement || op.Kind == audittest.OpUpload:
			decs -= op.Delta
		}
	}
	var gotIncs, gotDecs int64
	for _, r := range recs[1:] {
		if r[col["key_id"]] != strconv.FormatInt(obj.KeyID, 10) {
			t.Errorf("row of key %s with --key %d", r[col["key_id"]], obj.KeyID)
		}
		if r[col["object_id"]] != id {
			continue
		}
		i, _ := strconv.ParseInt(r[col["increments"]], 10, 64)
		d, _ := strconv.ParseInt(r[col["decrements"]], 10, 64)
		gotIncs += i
		gotDecs += d
	}
	if gotIncs != incs || gotDecs != decs {
		t.Errorf("usage of object %s: +%d -%d, want +%d -%d", id, gotIncs, gotDecs, incs, decs)
	}
	// --object: the same numbers, that object's rows only.
	out, err = run(t, append([]string{"usage", "--from", "2024-12-01", "--to", "2026-01-31", "--tz", "Europe/Stockholm", "--by", "month", "--object", id, "--format", "csv"}, global...)...)
	if err != nil {
		t.Fatalf("usage --object: %v\n%s", err, out)
	}
	oneObject, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil || len(oneObject) < 2 {
		t.Fatalf("usage --object csv: %v, %d records", err, len(oneObject))
	}
	var objIncs, objDecs int64
	for _, r := range oneObject[1:] {
		if r[col["object_id"]] != id {
			t.Errorf("usage --object %s: a row of object %s", id, r[col["object_id"]])
		}
		i, _ := strconv.ParseInt(r[col["increments"]], 10, 64)
		d, _ := strconv.ParseInt(r[col["decrements"]], 10, 64)
		objIncs += i
		objDecs += d
	}
	if objIncs != incs || objDecs != decs {
		t.Errorf("usage --object %s: +%d -%d, want +%d -%d", id, objIncs, objDecs, incs, decs)
	}
	out, err = run(t, append([]string{"usage", "--from", "2025-01-01", "--to", "2025-12-31"}, global...)...)
	if err != nil || !strings.Contains(out, "OPENING") {
		t.Errorf("usage table: %v\n%s", err, out)
	}
	if _, err := run(t, append([]string{"usage", "--from", "2025-01-01", "--to", "2025-12-31", "--tz", "Nowhere/Else"}, global...)...); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("bad zone: %v", err)
	}
	for _, bad := range []struct {
		args    []string
		message string
	}{
		{[]string{"--from", "2025-01-01", "--to", "2025-12-31", "--tz", "Local"}, "IANA time zone"},
		{[]string{"--from", "2025-03-01", "--to", "2025-01-31"}, "from must be before to"},
		{[]string{"--from", "1990-01-01", "--to", "2025-12-31", "--by", "day"}, "10000 periods at most"},
	} {
		if _, err := run(t, append(append([]string{"usage"}, bad.args...), global...)...); err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), bad.message) {
			t.Errorf("usage %v: %v, want a 400 saying %q", bad.args, err, bad.message)
		}
	}
	if _, err := run(t, "history", "--object", id, "--server", srv.URL, "--admin-token", "wrong"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong admin token: %v", err)
	}
}

// TestVerifyNamesAChangedLayerOfTheStateDatabase: verify compares the applied layers the state
// database holds (read in one pass, not loaded) with the replay's, and names a changed one.
func TestVerifyNamesAChangedLayerOfTheStateDatabase(t *testing.T) {
	dir, _ := seededDataDir(t)
	path := filepath.Join(dir, auditcli.SnapshotFile)
	ctx := context.Background()
	db, err := projections.OpenStateDB(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	// The last layer of the last owner, in key order.
	var changed state.LayerRecord
	owners, err := db.LayerOwners(ctx)
	if err == nil && len(owners) > 0 {
		changed.Owner = owners[len(owners)-1]
		err = db.EachLayer(changed.Owner, func(id string, info state.LayerInfo) bool {
			if id > changed.ID {
				changed.ID, changed.Info = id, info
			}
			return true
		})
	}
	if err == nil {
		changed.Info.Depth++
		err = db.PutLayers(ctx, []state.LayerRecord{changed})
	}
	if err := errors.Join(err, db.Close()); err != nil {
		t.Fatal(err)
	}
	owner, layer := changed.Owner, changed.ID
	out, err := run(t, "verify", "--data-dir", dir)
	if err == nil {
		t.Fatalf("a changed layer verified:\n%s", out)
	}
	want := fmt.Sprintf("projection vs replay: uploads of owner %s: layer %s differs", owner, layer)
	if !strings.Contains(out, want) {
		t.Errorf("output does not name the layer (%s):\n%s", want, out)
	}
}
