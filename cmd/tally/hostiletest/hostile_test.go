package hostiletest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
)

var largeBodyLine = regexp.MustCompile(`msg="reading a large body" .*client=(\S+)`)

// TestSlowSendersDoNotHoldUpUploads is the slow-body attack of issue 15 against the real
// server: eight connections, each from an address of its own, announce a 2 MB body and send a
// byte a second, with no token. Before, they held all four large-body slots and a real 1.2 MB
// upload waited until the server's read timeout cut them (59 s). Now a body reserves only its
// own size from the byte budget and each address has its own turn: the upload is answered,
// applied, while all eight are still connected. The server runs with a long grace period so
// that the rate limit does not cut the senders first (the next test shows it does).
func TestSlowSendersDoNotHoldUpUploads(t *testing.T) {
	bin := buildTally(t)
	s := startServe(t, bin, "--body-rate-grace", "10m")
	fx := provision(t, s)
	// A real log of 3000 entries (written by the codec), uploaded as a License Server would:
	// 1000, 2000, then 3000 entries, so that each upload applies 1000 new ones.
	versions := logVersions(t, fx.pub, fx.object, 3000, 1000)
	for _, v := range versions[:2] {
		if a := post(t, s.base, "UploadValuesToKey", with(fx.owner, "Data", v)); a.status != http.StatusOK {
			t.Fatalf("upload: %d %s", a.status, a.body)
		}
	}
	final := with(fx.owner, "Data", versions[2]).Encode()
	if len(final) < 1_200_000 {
		t.Fatalf("the last upload is %d bytes, want a body over 1.2 MB", len(final))
	}

	senders := make([]*dribbler, 8)
	for i := range senders {
		senders[i] = startDribbler(t.Context(), t, fmt.Sprintf("127.0.0.%d", 2+i), s.addr, 2_000_000)
	}
	// Every sender's body is being read: the server logs each large body it starts to read.
	s.log.await(t, largeBodyLine, len(senders), s.exited)

	resp, err := http.Post(s.base+"/api/data/UploadValuesToKey", "application/x-www-form-urlencoded", strings.NewReader(final))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for i, d := range senders {
		if !d.connected() {
			t.Fatalf("slow sender %d was no longer connected when the upload was answered (%q)", i, d.status)
		}
	}
	var res struct {
		Result  int `json:"result"`
		Applied int `json:"applied"`
		Known   int `json:"known"`
	}
	if err := json.Unmarshal(body, &res); err != nil || resp.StatusCode != http.StatusOK || res.Result != 0 || res.Applied != 1000 || res.Known != 2000 {
		t.Fatalf("upload of %d bytes among slow senders: %d %s", len(final), resp.StatusCode, body)
	}
	t.Logf("a %d-byte upload was answered (1000 entries applied) while 8 slow senders stayed connected", len(final))
}

// TestSlowSendersAreCut runs the same senders against the server's defaults (64 KiB/s after
// the first second): each is cut off with 408 after a few bytes, instead of holding a slot
// until the read timeout.
func TestSlowSendersAreCut(t *testing.T) {
	bin := buildTally(t)
	s := startServe(t, bin)
	senders := make([]*dribbler, 8)
	for i := range senders {
		senders[i] = startDribbler(t.Context(), t, fmt.Sprintf("127.0.0.%d", 2+i), s.addr, 2_000_000)
	}
	for i, d := range senders {
		<-d.closed // the server answers or closes: the test's deadline bounds the wait
		if !strings.Contains(d.status, " 408 ") {
			t.Errorf("slow sender %d: %q, want 408", i, d.status)
		}
	}
}

// TestBigBadBodiesStayWithinMemory is the big-body attack of issue 15: eight 64 MiB bodies
// (the largest tally serve accepts) sent at once with a wrong token, each from an address of
// its own. Before, the server's
// resident memory rose from 22 MB to 850 MB; now bodies reserve their size from a 128 MiB
// budget before they are read, and a body is held once as it is parsed, so the peak stays
// under 300 MB. Each is still answered "Unable to authenticate.".
func TestBigBadBodiesStayWithinMemory(t *testing.T) {
	bin := buildTally(t)
	s := startServe(t, bin)
	rss0, _ := s.memory(t)
	const size = 64 << 20
	prefix := "token=wrong-token&ProductId=1&Key=AAAA&Data="
	var wg sync.WaitGroup
	answers := make([]string, 8)
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := io.MultiReader(strings.NewReader(prefix), io.LimitReader(repeatByte('A'), size-int64(len(prefix))))
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.base+"/api/data/UploadValuesToKey", body)
			if err != nil {
				answers[i] = err.Error()
				return
			}
			req.ContentLength = size
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			// Each from an address of its own, so that only the byte budget bounds them.
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.0.%d", 2+i))}}
			client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
			resp, err := client.Do(req)
			if err != nil {
				answers[i] = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers[i] = fmt.Sprintf("%d %s", resp.StatusCode, b)
		}()
	}
	wg.Wait()
	for i, a := range answers {
		if a != `401 {"result":1,"message":"Unable to authenticate."}` {
			t.Errorf("body %d: %s", i, a)
		}
	}
	rss, peak := s.memory(t)
	t.Logf("server memory: %d MB at start, %d MB after, peak %d MB", rss0>>20, rss>>20, peak>>20)
	if peak >= 300e6 {
		t.Fatalf("the server's peak resident memory was %d MB, want under 300 MB", peak/1e6)
	}
}

// repeatByte is an endless reader of one byte.
type repeatByte byte

func (r repeatByte) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}
