package crashtest

import (
	"encoding/base64"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/usagelog"
)

// TestKillDuringAChunkedResolution kills the real binary with SIGKILL right after it logged
// the first chunk of an operator's in-chunks resolution of a log with 1,500 new entries (the
// real limit of 1000 per chunk). After a restart every chunk is all or nothing, the next upload
// of the same log resumes the rest, each entry counts once, a newer version flows normally, and
// `tally verify` agrees with the replay.
func TestKillDuringAChunkedResolution(t *testing.T) {
	bin := buildTally(t)
	h := newHarness(t, bin)
	ctx := t.Context()
	srv := h.start()
	h.waitReady(srv)
	productID := h.cli(srv, "product", "create", "--name", "resolution")
	token := h.cli(srv, "token", "create", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0")
	key := h.cli(srv, "key", "create", "--product", productID)
	pub, err := usagelog.ParsePublicKey([]byte(h.cli(nil, "rsa", "export", "--format", "pem")))
	if err != nil {
		t.Fatal(err)
	}
	owner := func(extra ...string) url.Values {
		v := url.Values{"token": {token}, "ProductId": {productID}, "Key": {key}}
		for i := 0; i+1 < len(extra); i += 2 {
			v.Set(extra[i], extra[i+1])
		}
		return v
	}
	var objs [2]int64
	for i := range objs {
		a := h.call(ctx, srv.url, "AddDataObjectToKey", owner("Name", "o"+strconv.Itoa(i)), "")
		if a.outcome != acknowledged {
			t.Fatalf("add data object: %+v", a)
		}
		objs[i] = a.id
	}
	const n = 1500
	var data []byte
	for i := range n {
		if data, err = usagelog.Record(data, pub, objs[i%2], 1, 1767225600+int64(i), false); err != nil {
			t.Fatal(err)
		}
	}
	upload := func(s *server, data []byte) answer {
		return h.call(ctx, s.url, "UploadValuesToKey", owner("Data", base64.StdEncoding.EncodeToString(data)), "")
	}
	sum := func(s *server) int64 {
		total := int64(0)
		for _, v := range listValues(t, h, s, owner()) {
			total += v
		}
		return total
	}
	if a := upload(srv, data); a.outcome != refused || a.status != 413 {
		t.Fatalf("the backlog was not refused: %+v", a)
	}
	h.cli(srv, "uploads", "resolve", "--key", key, "--in-chunks", "--reason", "backlog after an outage", "--by", "crashtest")

	h.stats.mu.Lock()
	h.stats.chunkApplied = make(chan struct{}, 1)
	chunk := h.stats.chunkApplied
	h.stats.mu.Unlock()
	answered := make(chan answer, 1)
	go func() { answered <- upload(srv, data) }()
	select {
	case <-chunk:
		h.kill(srv)
	case a := <-answered:
		t.Fatalf("the upload ended before a chunk was logged: %+v", a)
	}
	if a := <-answered; a.outcome == acknowledged {
		t.Logf("the upload was answered before the kill landed: %+v", a)
	}

	srv = h.start()
	h.waitReady(srv) // recovery has decided an interrupted chunk
	after := sum(srv)
	if after != 1000 && after != n {
		t.Fatalf("after the kill the objects sum to %d: not a whole number of chunks (1000 or %d)", after, n)
	}
	t.Logf("the kill left %d of %d entries applied", after, n)
	a := upload(srv, data)
	if a.outcome != acknowledged || int64(a.applied) != n-after {
		t.Fatalf("the retry: %+v, want %d applied", a, n-after)
	}
	if s := sum(srv); s != n {
		t.Fatalf("after the retry the objects sum to %d, want %d", s, n)
	}
	if a := upload(srv, data); a.outcome != acknowledged || a.applied != 0 {
		t.Fatalf("the same log again: %+v", a)
	}
	if data, err = usagelog.Record(data, pub, objs[0], 5, 1767225600+n, false); err != nil {
		t.Fatal(err)
	}
	if a := upload(srv, data); a.outcome != acknowledged || a.applied != 1 || a.known != n {
		t.Fatalf("a newer version: %+v", a)
	}
	out := h.cli(srv, "uploads", "list", "--key", key, "--state", "refused")
	if !strings.Contains(out, "cleared") || !strings.Contains(out, "in-chunks decided by crashtest") {
		t.Fatalf("uploads list:\n%s", out)
	}
	h.stop(srv)
	if out := h.cli(nil, "verify"); !strings.HasPrefix(out, "ok:") {
		t.Fatalf("tally verify: %s", out)
	}
}
