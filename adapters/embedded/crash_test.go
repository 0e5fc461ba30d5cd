package embedded_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/adapters/embedded"
	"github.com/tallyledger/tally/domain/eventstore"
)

// The crash test re-executes the test binary as a child that appends until it is killed.
const (
	crashChildEnv = "TALLY_CRASH_CHILD" // data dir: run as the crash child
	crashRunEnv   = "TALLY_CRASH_RUN"   // the child's run number, part of its event IDs
	crashSeedEnv  = "TALLY_CRASH_SEED"  // replays a parent's random choices
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(migrateChildEnv); dir != "" {
		if err := runMigrateChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "migrating child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	if dir := os.Getenv(crashChildEnv); dir != "" {
		run, _ := strconv.Atoi(os.Getenv(crashRunEnv))
		if err := runCrashChild(dir, run); err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// ack is one acknowledged append as the child reports it.
type ack struct {
	Stream string      `json:"s"`
	IDs    []uuid.UUID `json:"ids"`
	Next   uint64      `json:"next"`
	Pos    uint64      `json:"pos"`
}

// appendTag is the metadata of every crash-test event: which append it belongs to and where in
// it, so that a partly present append can be told from a whole one.
type appendTag struct {
	Append string `json:"a"`
	N      int    `json:"n"`
	I      int    `json:"i"`
}

// crashEventID derives an event's ID from its append and index, so the parent can recompute it.
func crashEventID(key string, i int) uuid.UUID {
	return uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "tally-crash-test/%s/%d", key, i))
}

// runCrashChild appends forever from several goroutines: some own a stream and append with
// exact expected revisions, others share streams and append with Any. Each acknowledged append
// goes to stdout as one line, written in one call after Append returned.
func runCrashChild(dir string, run int) error {
	ctx := context.Background()
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		return err
	}
	var out sync.Mutex
	errs := make(chan error, 1)
	for g := range 6 {
		go func() {
			errs <- crashAppender(ctx, store, run, g, &out)
		}()
	}
	return <-errs
}

func crashAppender(ctx context.Context, store *embedded.Store, run, g int, out *sync.Mutex) error {
	rng := rand.New(rand.NewPCG(uint64(run), uint64(g)))
	stream := fmt.Sprintf("exact-%d", g)
	exact := g%3 != 2
	if !exact {
		stream = fmt.Sprintf("any-%d", g%2)
	}
	expected := eventstore.NoStream()
	if exact {
		last, err := store.ReadStream(ctx, stream, eventstore.Backwards, eventstore.End, 1)
		switch {
		case errors.Is(err, eventstore.ErrStreamNotFound):
		case err != nil:
			return err
		default:
			expected = eventstore.Exact(last[0].Revision)
		}
	}
	for seq := 0; ; seq++ {
		key := fmt.Sprintf("%d/%d/%d", run, g, seq)
		n := 1 + rng.IntN(4)
		events := make([]eventstore.EventData, n)
		for i := range events {
			meta, _ := json.Marshal(appendTag{Append: key, N: n, I: i})
			events[i] = eventstore.EventData{
				ID:       crashEventID(key, i),
				Type:     "CrashTest",
				Data:     fmt.Appendf(nil, `{"stream":%q,"key":%q,"pad":%q}`, stream, key, strings.Repeat("x", rng.IntN(200))),
				Metadata: meta,
			}
		}
		want := expected
		if !exact {
			want = eventstore.Any()
		}
		result, err := store.Append(ctx, stream, want, events...)
		if err != nil {
			return fmt.Errorf("append %s to %s: %w", key, stream, err)
		}
		expected = eventstore.Exact(result.NextExpectedRevision)
		line, _ := json.Marshal(ack{Stream: stream, IDs: dataIDs(events), Next: result.NextExpectedRevision, Pos: uint64(result.Position)})
		out.Lock()
		_, err = os.Stdout.Write(append(line, '\n'))
		out.Unlock()
		if err != nil {
			return err
		}
	}
}

func dataIDs(events []eventstore.EventData) []uuid.UUID {
	ids := make([]uuid.UUID, len(events))
	for i, ev := range events {
		ids[i] = ev.ID
	}
	return ids
}

// crashSeed is the seed of a test's random kills: crashSeedEnv's value when set (to replay a
// failed run), else a new one; it is logged either way.
func crashSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(crashSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s: %v", crashSeedEnv, err)
		}
	}
	t.Logf("seed %d (replay with %s=%d)", seed, crashSeedEnv, seed)
	return seed
}

// TestCrashRecovery kills an appending child process with SIGKILL at random moments and checks,
// after each kill, that the store on disk holds every acknowledged append exactly as
// acknowledged, no append in part, and streams without holes or duplicates.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	kills := 20
	if os.Getenv("TALLY_LONG") != "" {
		kills = 200
	}
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	dir := t.TempDir()
	var acked []ack
	stored := 0
	for run := range kills {
		acked = append(acked, runAndKill(t, dir, run, rng)...)
		stored = verifyCrashStore(t, dir, acked)
	}
	// Appends stored but never acknowledged were committed when the kill came before the
	// child's reply or print: the kills did land mid-flight.
	t.Logf("%d kills: %d acknowledged appends verified, %d stored without acknowledgement", kills, len(acked), stored-len(acked))
}

// runAndKill starts a child on dir and SIGKILLs it after a random number of acknowledgements or
// after a random delay, whichever the dice chose; it returns what the child acknowledged.
func runAndKill(t *testing.T, dir string, run int, rng *rand.Rand) []ack {
	t.Helper()
	child := startChild(t, "crash child", crashChildEnv+"="+dir, crashRunEnv+"="+strconv.Itoa(run))
	killAfterLines := -1
	if rng.IntN(2) == 0 {
		killAfterLines = 1 + rng.IntN(400)
	} else {
		time.AfterFunc(time.Duration(rng.IntN(300))*time.Millisecond, child.kill)
	}

	var acks []ack
	for {
		line, err := child.lines.ReadBytes('\n')
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("read crash child: %v", err)
			}
			break // a partial last line was never a whole acknowledgement
		}
		var a ack
		if err := json.Unmarshal(line, &a); err != nil {
			t.Fatalf("crash child printed %q: %v", line, err)
		}
		acks = append(acks, a)
		if len(acks) == 1 {
			// The child holds the store open now: another opener must be turned away.
			if s, err := embedded.Open(t.Context(), dir); !errors.Is(err, embedded.ErrLocked) {
				if err == nil {
					_ = s.Close()
				}
				t.Fatalf("open while the child holds the store: got %v, want ErrLocked", err)
			}
		}
		if len(acks) == killAfterLines {
			child.kill()
		}
	}
	if killed, err := child.wait(); !killed {
		t.Fatalf("crash child run %d ended by itself (%v): %s", run, err, child.stderr.String())
	}
	return acks
}

// childProcess is the test binary run again as a child process that a test kills (the crash
// and migration tests): its stdout read line by line, its stderr kept for a failure's message.
type childProcess struct {
	cmd      *exec.Cmd
	lines    *bufio.Reader
	stderr   strings.Builder
	watchdog *time.Timer
}

// startChild starts the test binary with env added (the variables that make it a child). A
// child that neither ends nor is killed within a minute is killed: a failure, not a hang.
func startChild(t *testing.T, what string, env ...string) *childProcess {
	t.Helper()
	c := &childProcess{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stderr = &c.stderr
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	c.lines = bufio.NewReader(stdout)
	c.watchdog = time.AfterFunc(time.Minute, c.kill)
	return c
}

// kill sends SIGKILL.
func (c *childProcess) kill() { _ = c.cmd.Process.Kill() }

// wait waits for the child to end, and reports whether a signal ended it.
func (c *childProcess) wait() (killed bool, err error) {
	c.watchdog.Stop()
	err = c.cmd.Wait()
	var exit *exec.ExitError
	return errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled(), err
}

// verifyCrashStore checks the store in dir against the acknowledgements and returns how many
// appends it holds.
func verifyCrashStore(t *testing.T, dir string, acked []ack) int {
	t.Helper()
	ctx := t.Context()
	store, err := embedded.Open(ctx, dir)
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer func() {
		if err := store.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	var all []eventstore.RecordedEvent
	for from := eventstore.Start; ; {
		page, err := store.ReadAll(ctx, from, 4096)
		if err != nil {
			t.Fatalf("read all: %v", err)
		}
		all = append(all, page...)
		if len(page) < 4096 {
			break
		}
		from = page[len(page)-1].Position
	}

	type location struct {
		stream   string
		revision uint64
		position eventstore.Position
	}
	byID := make(map[uuid.UUID]location, len(all))
	nextRevision := map[string]uint64{}
	appends := 0
	for i := 0; i < len(all); appends++ {
		ev := all[i]
		// This store gives out positions 1, 2, 3... in commit order.
		if ev.Position != eventstore.Position(i+1) {
			t.Fatalf("event %d sits at position %d", i, ev.Position)
		}
		var tag appendTag
		if err := json.Unmarshal(ev.Metadata, &tag); err != nil || tag.I != 0 || tag.N < 1 {
			t.Fatalf("position %d: %s/%d (%s) does not start an append: %v", ev.Position, ev.Stream, ev.Revision, ev.Metadata, err)
		}
		// The whole append follows, in order, on consecutive revisions and positions.
		for k := range tag.N {
			if i+k >= len(all) {
				t.Fatalf("append %s is present in part: %d of %d events", tag.Append, k, tag.N)
			}
			part := all[i+k]
			var partTag appendTag
			if err := json.Unmarshal(part.Metadata, &partTag); err != nil || partTag != (appendTag{Append: tag.Append, N: tag.N, I: k}) {
				t.Fatalf("append %s is present in part: event %d is %s (%v)", tag.Append, k, part.Metadata, err)
			}
			if part.ID != crashEventID(tag.Append, k) || part.Stream != ev.Stream {
				t.Fatalf("append %s event %d: id %s in %s", tag.Append, k, part.ID, part.Stream)
			}
			if part.Revision != nextRevision[part.Stream] {
				t.Fatalf("%s: revision %d where %d was due", part.Stream, part.Revision, nextRevision[part.Stream])
			}
			nextRevision[part.Stream]++
			if _, dup := byID[part.ID]; dup {
				t.Fatalf("event %s is stored twice", part.ID)
			}
			byID[part.ID] = location{part.Stream, part.Revision, part.Position}
		}
		i += tag.N
	}
	for stream, next := range nextRevision {
		got, err := store.ReadStream(ctx, stream, eventstore.Forwards, 0, int(next)+1)
		if err != nil || uint64(len(got)) != next {
			t.Fatalf("read %s: %d events (%v), global order holds %d", stream, len(got), err, next)
		}
	}
	for _, a := range acked {
		first := a.Next + 1 - uint64(len(a.IDs))
		for k, id := range a.IDs {
			loc, ok := byID[id]
			if !ok {
				t.Fatalf("acknowledged append to %s (revisions %d..%d) lost event %s", a.Stream, first, a.Next, id)
			}
			wantPosition := eventstore.Position(a.Pos) - eventstore.Position(len(a.IDs)-1-k)
			if loc.stream != a.Stream || loc.revision != first+uint64(k) || loc.position != wantPosition {
				t.Fatalf("acknowledged event %s of %s at revision %d, position %d is stored in %s at %d, %d",
					id, a.Stream, first+uint64(k), wantPosition, loc.stream, loc.revision, loc.position)
			}
		}
	}
	return appends
}

// TestLockedDirectory checks that a second opener of a data dir is refused until the first
// closes.
func TestLockedDirectory(t *testing.T) {
	dir := t.TempDir()
	first, err := embedded.Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := embedded.Open(t.Context(), dir); !errors.Is(err, embedded.ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := embedded.Open(t.Context(), dir)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
}
