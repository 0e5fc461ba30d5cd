package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/tallyledger/tally/adapters/usagelog"
)

// findChromium returns the path of a Chromium or Chrome binary, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser is one headless Chromium tab on the console, with every URL it requested.
type browser struct {
	t    *testing.T
	ctx  context.Context
	mu   sync.Mutex
	urls []string
	shot string // screenshot directory
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := findChromium()
	if path == "" {
		if os.Getenv("TALLY_REQUIRE_BROWSER") != "" {
			t.Fatal("TALLY_REQUIRE_BROWSER is set but no chromium is installed (apt-get install chromium)")
		}
		t.Skip("no chromium found (apt-get install chromium): the console's browser test is skipped")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx, shot: os.Getenv("TALLY_CONSOLE_SCREENSHOTS")}
	if b.shot == "" {
		b.shot = t.TempDir()
	}
	if err := os.MkdirAll(b.shot, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			b.mu.Lock()
			b.urls = append(b.urls, e.Request.URL)
			b.mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

// step runs actions with a bound on how long they may take.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// waitFor waits until a JavaScript expression is truthy.
func (b *browser) waitFor(what, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(15*time.Second))); err != nil {
		text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body.innerText`))
		b.t.Fatalf("%s: waiting for %s: %v\npage:\n%s", what, expr, err, text)
	}
}

func evalJS[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func (b *browser) text(sel string) string {
	return evalJS[string](b, fmt.Sprintf(`(document.querySelector(%q) || {innerText: ""}).innerText`, sel))
}

// open goes to a console page by its hash and waits for the view to render.
func (b *browser) open(hash, ready string) {
	b.t.Helper()
	before := evalJS[int](b, `window.tally.rendered`)
	b.do("open "+hash, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = %q`, hash)))
	b.waitFor("open "+hash, fmt.Sprintf(`window.tally.rendered > %d && (%s)`, before, ready))
}

// screenshot saves the viewport as a PNG.
func (b *browser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(b.shot, name+".png"), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) signIn(secret string) {
	b.t.Helper()
	b.do("sign in",
		chromedp.WaitVisible(chromedp.CSS("#credential")),
		chromedp.SetValue(chromedp.CSS("#credential"), secret),
		chromedp.Click(chromedp.CSS("#signin-form button")),
	)
}

// apiGet calls the server with a bearer credential and decodes the JSON answer.
func apiGet(t *testing.T, base, secret, path string, out any) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, b)
		}
	}
	return resp.StatusCode
}

func apiPost(t *testing.T, base, secret, path string, in, out any) int {
	t.Helper()
	var body []byte
	if in != nil {
		body, _ = json.Marshal(in)
	}
	req, err := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("POST %s: %v\n%s", path, err, b)
		}
	}
	return resp.StatusCode
}

// TestConsoleInABrowser runs tally serve on a temporary data directory with data made through
// the APIs and real uploads (logs written by the codec), then drives headless Chromium through
// the console: sign-in (wrong token, admin, viewer), each view with what a person would see,
// a correction from an object's page, the viewer refused one, bad input shown as messages,
// and no request to any host but the server. It saves a screenshot of each view.
func TestConsoleInABrowser(t *testing.T) {
	b := newBrowser(t)

	dataDir := privateTempDir(t) // serve refuses a data directory others may read
	key, err := usagelog.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(t.TempDir(), "key.pem")
	if err := usagelog.SavePrivateKeyFile(keyPath, key); err != nil {
		t.Fatal(err)
	}
	g := &globalFlags{DataDir: dataDir}
	cfg := serveConfig{Addr: "127.0.0.1:0", Store: "embedded", MaxBodyBytes: 1 << 20, UploadLease: time.Minute, RSAKeys: []string{keyPath}}
	urls, stop := startServe(t, g, cfg, &syncBuffer{})
	// The console, the admin and audit APIs are on the admin listener; the Cryptolens API on
	// the public one.
	base, public := urls.Admin, urls.Public
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	adminTok, err := g.adminToken()
	if err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) string {
		t.Helper()
		root := newRootCommand()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs(append([]string{"--server", base, "--data-dir", dataDir}, args...))
		if err := root.Execute(); err != nil {
			t.Fatalf("tally %v: %v", args, err)
		}
		return strings.TrimSpace(out.String())
	}

	// Data: two products, three keys, objects on keys and a product, direct calls, uploads.
	desktop := cli("product", "create", "--name", "Desktop app")
	cli("product", "create", "--name", "Build server")
	key1 := cli("key", "create", "--product", desktop)
	key2 := cli("key", "create", "--product", desktop)
	setup := cli("token", "create", "--name", "setup", "--permissions", "all", "--product-lock", "0", "--key-lock", "0", "--feature-lock", "0")
	// The application's token: key-specific methods, at most 10 per change.
	cli("token", "create", "--name", "app", "--permissions", "IncrementIntValue,DecrementIntValue,ListDataObjects", "--product-lock", desktop, "--key-lock", "-1", "--feature-lock", "10")
	owner1 := url.Values{"token": {setup}, "ProductId": {desktop}, "Key": {key1}}
	owner2 := url.Values{"token": {setup}, "ProductId": {desktop}, "Key": {key2}}
	add := func(owner url.Values, name, value string) string {
		r := call(t, public, "AddDataObjectToKey", with(owner, "Name", name, "IntValue", value))
		if r["result"] != float64(0) {
			t.Fatalf("AddDataObjectToKey %s: %v", name, r)
		}
		return fmt.Sprint(r["id"])
	}
	seats := add(owner1, "seats", "0")
	calls := add(owner2, "api-calls", "0")
	for _, n := range []string{"2", "3"} {
		if r := call(t, public, "IncrementIntValueToKey", with(owner2, "Id", calls, "IntValue", n)); r["result"] != float64(0) {
			t.Fatalf("increment: %v", r)
		}
	}
	// Usage logs for seats, written by the codec as a License Server would, with layers on
	// past days: uploaded in two goes (the second file holds the first's layers, known).
	zone := "Europe/Stockholm"
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().In(loc)
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, loc)
	var logData []byte
	layer := func(daysAgo int, amount int64) {
		ts := today.AddDate(0, 0, -daysAgo).Add(10 * time.Hour).Unix()
		if daysAgo == 0 {
			ts = now.Unix() // not before today's midnight, whenever the test runs
		}
		var err error
		if logData, err = usagelog.Record(logData, &key.PublicKey, mustInt(t, seats), amount, ts, false); err != nil {
			t.Fatal(err)
		}
	}
	upload := func(wantApplied, wantKnown float64) {
		r := call(t, public, "UploadValuesToKey", with(owner1, "Data", base64.StdEncoding.EncodeToString(logData)))
		if r["result"] != float64(0) || r["applied"] != wantApplied || r["known"] != wantKnown {
			t.Fatalf("upload: %v", r)
		}
	}
	layer(9, 3)
	layer(6, 2)
	layer(6, 1)
	upload(3, 0)
	layer(3, 2)
	layer(4, 1) // earlier than the layer before it: an anomaly
	layer(1, -1)
	layer(0, 2)
	upload(4, 3) // seats: 3+2+1+2+1-1+2 = 10, at the app token's feature lock of 10
	// A newer version whose new layer names a data object that does not exist: refused, and
	// recorded on the key's upload stream.
	refusedLog, err := usagelog.Record(logData, &key.PublicKey, 987654, 1, now.Unix(), false)
	if err != nil {
		t.Fatal(err)
	}
	if r := call(t, public, "UploadValuesToKey", with(owner1, "Data", base64.StdEncoding.EncodeToString(refusedLog))); r["result"] != float64(1) {
		t.Fatalf("an upload naming an unknown object was not refused: %v", r)
	}

	var hist struct {
		Entries []struct {
			Layer    string `json:"layer"`
			UploadID string `json:"uploadId"`
		} `json:"entries"`
	}
	if code := apiGet(t, base, adminTok, "/v1/dataobjects/"+seats+"/history", &hist); code != http.StatusOK || len(hist.Entries) < 7 {
		t.Fatalf("history: %d %+v", code, hist)
	}
	knownLayer := hist.Entries[1].Layer
	if knownLayer == "" {
		t.Fatalf("the first change of seats is not an upload entry: %+v", hist.Entries[1])
	}

	// A wrong token: a clear message on the sign-in form, no view.
	b.do("load the console", chromedp.Navigate(base+"/console/"))
	b.signIn("not-the-admin-token")
	b.waitFor("wrong token", shown("signin-error"))
	if msg := b.text("#signin-error"); !strings.Contains(msg, "refused") || !strings.Contains(msg, "Unable to authenticate") {
		t.Errorf("wrong token: the page says %q", msg)
	}
	b.screenshot("signin-refused")

	// The admin signs in: the overview.
	b.signIn(adminTok)
	b.waitFor("overview", `document.querySelector("#overview-cards")`)
	cards := evalJS[map[string]string](b, `Object.fromEntries([...document.querySelectorAll("#overview-cards .stat")].map(c => [c.dataset.metric, c.querySelector(".stat-value").innerText]))`)
	for metric, want := range map[string]string{"Products": "2", "License keys": "2", "Data objects": "2", "Entries applied": "7", "Uploads this month": "2", "Access tokens": "2", "Refused uploads": "1"} {
		if cards[metric] != want {
			t.Errorf("overview %s: %q, want %q (cards %v)", metric, cards[metric], want, cards)
		}
	}
	if got := b.text("#asof"); !strings.HasPrefix(got, "As of event ") {
		t.Errorf("overview does not say where it stands: %q", got)
	}
	b.screenshot("overview")

	// Usage of seats by day in Stockholm over 14 days: one point per day, equal to /v1/usage.
	from, to := today.AddDate(0, 0, -13).Format(time.DateOnly), today.Format(time.DateOnly)
	usageHash := "#/usage" + "?" + url.Values{"scope": {"object"}, "id": {seats}, "from": {from}, "to": {to}, "by": {"day"}, "tz": {zone}}.Encode()
	b.open(usageHash, `window.tally.chart && document.querySelector("#usage-table")`)
	checkChart := func(wantExtraToday int64) map[string]int64 {
		t.Helper()
		points := evalJS[[]float64](b, `window.tally.chart.data[1]`)
		periods := evalJS[[]string](b, `[...document.querySelectorAll("#usage-table tbody tr td:first-child")].map(td => td.innerText)`)
		if len(points) != 14 || len(periods) != 14 {
			t.Fatalf("chart of 14 days: %d points, %d table rows", len(points), len(periods))
		}
		var rep struct {
			Rows []struct {
				ObjectID int64  `json:"objectId"`
				Period   string `json:"period"`
				Net      int64  `json:"net"`
			} `json:"rows"`
		}
		q := url.Values{"from": {from}, "to": {to}, "by": {"day"}, "tz": {zone}, "key": {key1}}
		if code := apiGet(t, base, adminTok, "/v1/usage?"+q.Encode(), &rep); code != http.StatusOK {
			t.Fatalf("/v1/usage: %d", code)
		}
		want := map[string]int64{}
		for _, r := range rep.Rows {
			if fmt.Sprint(r.ObjectID) == seats {
				want[r.Period] += r.Net
			}
		}
		for i, p := range periods {
			if p != today.AddDate(0, 0, i-13).Format(time.DateOnly) {
				t.Errorf("period %d is %s", i, p)
			}
			if int64(points[i]) != want[p] {
				t.Errorf("chart point %s: %v, /v1/usage says %d", p, points[i], want[p])
			}
		}
		if want[to] != 2+wantExtraToday {
			t.Errorf("today's usage of seats: %d, want %d", want[to], 2+wantExtraToday)
		}
		return want
	}
	checkChart(0)
	if got := b.text("#chart-zone"); got != "Times in "+zone {
		t.Errorf("the chart's zone: %q", got)
	}
	// Each number opens down to its data objects: one row for seats, its net over the range.
	objRows := evalJS[[]string](b, `[...document.querySelectorAll("#usage-objects tbody tr")].map(r => [...r.cells].map(c => c.innerText).join("|"))`)
	if len(objRows) != 1 || !strings.HasPrefix(objRows[0], "#"+seats+" seats|") || !strings.Contains(objRows[0], "|10|10") {
		t.Errorf("the usage view's objects: %q", objRows)
	}
	// The view's CSV is /v1/usage's, for the same query.
	b.do("download the CSV", chromedp.Evaluate[chromedp.Void](`(() => { window.csvBlob = null; const make = URL.createObjectURL; URL.createObjectURL = (blob) => { window.csvBlob = blob; return make(blob); }; document.getElementById("csv").click(); })()`))
	b.waitFor("the CSV", `window.csvBlob`)
	csvText := evalJS[string](b, `window.csvBlob.text()`)
	apiCSV := func() string {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/usage?"+url.Values{"from": {from}, "to": {to}, "by": {"day"}, "tz": {zone}, "time": {"usage"}, "object": {seats}, "format": {"csv"}}.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+adminTok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}()
	if csvText != apiCSV {
		t.Errorf("the usage view's CSV:\n%s\n/v1/usage's:\n%s", csvText, apiCSV)
	}
	csvRows := strings.Split(strings.TrimSpace(csvText), "\n")
	if len(csvRows) != 7 { // the header and the six days with layers of seats
		t.Errorf("the CSV of seats has %d lines:\n%s", len(csvRows), csvText)
	}
	for _, row := range csvRows[1:] {
		if f := strings.Split(row, ","); len(f) < 9 || f[8] != seats {
			t.Errorf("a CSV row of another object: %s", row)
		}
	}
	b.screenshot("usage")

	// Bad input: a zone that does not exist, a range of more than 10,000 periods.
	badZone := "#/usage?" + url.Values{"from": {from}, "to": {to}, "tz": {"Mars/Olympus_Mons"}}.Encode()
	b.open(badZone, shown("form-error"))
	if msg := b.text("#form-error"); !strings.Contains(msg, "Mars/Olympus_Mons") || !strings.Contains(msg, "time zone") {
		t.Errorf("unknown zone: the page says %q", msg)
	}
	b.open("#/overview?tz=Nowhere/Land", shown("form-error"))
	if msg := b.text("#form-error"); !strings.Contains(msg, `"Nowhere/Land" is not a time zone`) {
		t.Errorf("overview in an unknown zone: the page says %q", msg)
	}
	tooLong := "#/usage?" + url.Values{"from": {"2020-01-01"}, "to": {"2025-12-31"}, "by": {"hour"}, "tz": {zone}}.Encode()
	b.open(tooLong, shown("form-error"))
	if msg := b.text("#form-error"); !strings.Contains(msg, "10000 periods at most") {
		t.Errorf("too many periods: the page says %q", msg)
	}

	// Limits: seats (10 of a feature lock of 10) is over; the top key is key 1.
	b.open("#/limits", `document.querySelector("#limits-table") && document.querySelector("#top-table")`)
	if got := b.text("#limits-table"); !strings.Contains(got, "seats") || !strings.Contains(got, "100%") || !strings.Contains(got, "over") {
		t.Errorf("limits table: %q", got)
	}
	if got := evalJS[string](b, `document.querySelector("#top-table tbody tr td").innerText`); got != key1 {
		t.Errorf("top key: %q, want %s", got, key1)
	}
	b.screenshot("limits")

	// The data objects, and seats' page: its history lists the upload layer of a known entry.
	b.open("#/objects", `document.querySelector("#objects-table")`)
	b.screenshot("objects")
	b.open("#/object/"+seats+"?"+url.Values{"from": {from}, "to": {to}, "tz": {zone}}.Encode(), `document.querySelector("#history-table") && document.querySelector("#object-chart #chart") && window.tally.chart`)
	rowText := evalJS[string](b, fmt.Sprintf(`[...document.querySelectorAll("#history-table tbody tr")].map(r => r.innerText).find(t => t.includes(%q)) || ""`, knownLayer[:12]))
	if !strings.Contains(rowText, "upload layer") || !strings.Contains(rowText, "committed") {
		t.Errorf("history row of layer %s: %q", knownLayer, rowText)
	}
	// The layer written out of order is flagged as an anomaly where it is listed.
	anomalous := evalJS[string](b, `[...document.querySelectorAll("#history-table tbody tr")].map(r => r.innerText).find(t => t.includes("anomaly")) || ""`)
	if !strings.Contains(anomalous, "upload layer") || !strings.Contains(anomalous, "+1") || !strings.Contains(anomalous, today.AddDate(0, 0, -4).Format(time.DateOnly)) {
		t.Errorf("the anomalous layer's row: %q", anomalous)
	}
	// The value as of a time picked on the chart. Value as of T counts what the store had
	// recorded by T: six days ago the object did not exist yet (it was added today); at the
	// end of today it is the current value.
	pick := func(i int) string {
		t.Helper()
		b.do("pick a day", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const c = window.tally.chart; c.setCursor({left: c.valToPos(c.data[0][%d], "x"), top: 10}); document.getElementById("chart").dispatchEvent(new MouseEvent("click")); })()`, i)))
		b.waitFor("value as of", fmt.Sprintf(`document.getElementById("value-at-value") && document.querySelector("#value-at .stat-label").innerText.includes(%q)`, today.AddDate(0, 0, i-12).Format(time.DateOnly)))
		return b.text("#value-at-value")
	}
	if got := pick(7); got != "—" || !strings.Contains(b.text("#value-at"), "did not exist yet") {
		t.Errorf("value as of the end of %s: %q, want none", today.AddDate(0, 0, -6).Format(time.DateOnly), b.text("#value-at"))
	}
	if got := pick(13); got != "10" {
		t.Errorf("value as of the end of today: %q, want 10", got)
	}
	b.screenshot("object")

	// A correction posted from the page appears in the history and in the usage.
	b.do("post a correction",
		chromedp.SetValue(chromedp.CSS(`#correction-form input[name="amount"]`), "-4"),
		chromedp.SetValue(chromedp.CSS(`#correction-form input[name="reason"]`), "refund, ticket 4711"),
		chromedp.Click(chromedp.CSS("#correction-form button")),
	)
	b.waitFor("the correction in the history", `document.querySelector("#history-table") && document.querySelector("#history-table").innerText.includes("correction: refund, ticket 4711")`)
	if got := b.text("#current-value"); got != "6" {
		t.Errorf("value after the correction: %q, want 6", got)
	}
	b.open(usageHash+"&time=usage", `window.tally.chart && document.querySelector("#usage-table")`)
	checkChart(-4)

	// Uploads: the refused version (newest, with its reason) and both committed uploads.
	b.open("#/uploads", `document.querySelector("#uploads-table")`)
	ups := evalJS[[]string](b, `[...document.querySelectorAll("#uploads-table tbody tr")].map(r => r.innerText)`)
	if len(ups) != 3 || !strings.Contains(ups[0], "refused") || !strings.Contains(ups[0], "invalid-object") ||
		!strings.Contains(ups[1], "committed") || !strings.Contains(ups[2], "committed") {
		t.Errorf("uploads: %q", ups)
	}
	b.screenshot("uploads")

	// An object that does not exist: a clear message.
	b.open("#/object/99999", shown("view-error"))
	if got := b.text("#view-error"); !strings.Contains(got, "could not be found") {
		t.Errorf("missing object: %q", got)
	}

	// A viewer credential, created by the admin on the Access page: its secret is shown once.
	b.open("#/access", `document.querySelector("#viewer-form")`)
	b.do("create a viewer",
		chromedp.Evaluate[chromedp.Void](`document.querySelector("#viewer-form").closest("details").open = true`),
		chromedp.SetValue(chromedp.CSS(`#viewer-form input[name="name"]`), "billing"),
		chromedp.SetValue(chromedp.CSS(`#viewer-form input[name="days"]`), "30"),
		chromedp.Click(chromedp.CSS("#viewer-form button")),
	)
	b.waitFor("the new viewer's secret and listing", `document.getElementById("new-viewer-secret") && document.querySelector("#viewers-table") && document.querySelector("#viewers-table").innerText.includes("billing")`)
	var v struct{ Secret string }
	v.Secret = b.text("#new-viewer-secret")
	if !strings.HasPrefix(v.Secret, "tv_") {
		t.Fatalf("the new viewer's secret: %q", v.Secret)
	}
	if got := b.text("#viewers-table"); !strings.Contains(got, "billing") {
		t.Errorf("the new viewer is not listed: %q", got)
	}
	b.screenshot("access")
	b.open("#/access?again", `document.querySelector("#viewers-table")`) // a new hash: the page is rendered again
	if got := b.text("#viewers-table"); !strings.Contains(got, "billing") || !strings.Contains(got, "active") || strings.Contains(evalJS[string](b, `document.documentElement.outerHTML`), v.Secret) {
		t.Errorf("the access page after creation: %q", got)
	}
	b.do("sign out", chromedp.Click(chromedp.CSS("#signout")))
	b.signIn(v.Secret)
	b.waitFor("viewer overview", `document.querySelector("#overview-cards")`)
	if got := evalJS[string](b, `location.hash`); got != "#/overview" {
		t.Errorf("after sign-in: %s", got)
	}
	if got := b.text("#role"); got != "Viewer (read-only)" {
		t.Errorf("viewer role: %q", got)
	}
	b.open("#/object/"+seats, `document.querySelector("#history-table")`)
	if evalJS[bool](b, `!!document.querySelector("#correction-form")`) || !strings.Contains(b.text("#correction-readonly"), "read-only") {
		t.Error("the viewer is offered the correction form")
	}
	refused := evalJS[string](b, `fetch("/v1/dataobjects/`+seats+`/corrections", {method: "POST", headers: {Authorization: "Bearer " + sessionStorage.getItem("tally.credential"), "Content-Type": "application/json"}, body: JSON.stringify({amount: 1, reason: "x"})}).then(async r => r.status + " " + (await r.json()).error)`)
	if !strings.HasPrefix(refused, "403 ") || !strings.Contains(refused, "read-only") {
		t.Errorf("a viewer's correction: %q", refused)
	}
	b.screenshot("object-viewer")

	// Revoked while the page is open: the next view goes back to the form and says why.
	var viewers struct {
		Viewers []struct {
			ID string `json:"id"`
		} `json:"viewers"`
	}
	if code := apiGet(t, base, adminTok, "/admin/v1/viewers", &viewers); code != http.StatusOK || len(viewers.Viewers) != 1 {
		t.Fatalf("list viewers: %d %+v", code, viewers)
	}
	if code := apiPost(t, base, adminTok, "/admin/v1/viewers/"+viewers.Viewers[0].ID+"/revoke", nil, nil); code != http.StatusOK {
		t.Fatalf("revoke the viewer: %d", code)
	}
	b.do("open uploads", chromedp.Evaluate[chromedp.Void](`location.hash = "#/uploads"`))
	b.waitFor("revoked viewer", shown("signin-error"))
	if msg := b.text("#signin-error"); !strings.Contains(msg, "the viewer credential was revoked") || !evalJS[bool](b, `sessionStorage.getItem("tally.credential") === null`) {
		t.Errorf("revoked viewer: the page says %q", msg)
	}

	// No secret on the page; no request to any host but the server.
	html := evalJS[string](b, `document.documentElement.outerHTML`)
	if strings.Contains(html, adminTok) || strings.Contains(html, v.Secret) {
		t.Error("a credential's secret is on the page")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.urls) < 10 {
		t.Errorf("only %d requests seen: the network events are not observed", len(b.urls))
	}
	for _, u := range b.urls {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") && !strings.HasPrefix(u, "blob:"+base) {
			t.Errorf("the console requested %s, not on %s", u, base)
		}
		if strings.Contains(u, adminTok) || strings.Contains(u, v.Secret) {
			t.Errorf("a secret in a URL: %s", u)
		}
	}
}

// shown is a JavaScript expression: the element with this id exists and is not hidden.
func shown(id string) string {
	return fmt.Sprintf(`(document.getElementById(%q) || {hidden: true}).hidden === false`, id)
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
