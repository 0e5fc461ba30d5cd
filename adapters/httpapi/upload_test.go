package httpapi_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyledger/tally/adapters/httpapi/apitest"
	"github.com/tallyledger/tally/domain"
	"github.com/tallyledger/tally/domain/ledger"
)

// plainLog is a readable stand-in for the usage-log codec, enough to drive the ledger's real
// upload path from HTTP: Data is "objectId:+amount" or "objectId:-amount" entries separated by
// commas, oldest first, each its own layer identified by the hash of the log up to it.
type plainLog struct{}

func (plainLog) Decode(_ context.Context, data string, known func([32]byte) bool) ([]ledger.LogEntry, error) {
	parts := strings.Split(data, ",")
	entries := make([]ledger.LogEntry, len(parts))
	for i, p := range parts {
		id, amount, found := strings.Cut(p, ":")
		n, err1 := strconv.ParseInt(id, 10, 64)
		a, err2 := strconv.ParseInt(amount, 10, 64)
		if !found || err1 != nil || err2 != nil || a == 0 {
			return nil, domain.ErrDataCorrupted
		}
		entries[i] = ledger.LogEntry{
			Layer: sha256.Sum256([]byte(strings.Join(parts[:i+1], ","))), ObjectID: n,
			Decrement: a < 0, Amount: max(a, -a), Timestamp: 1700000000 + int64(i),
		}
	}
	for i := len(entries) - 1; i >= 0; i-- {
		if known(entries[i].Layer) {
			return entries[i+1:], nil
		}
	}
	return entries, nil
}

func TestUploadResultBody(t *testing.T) {
	env := apitest.StartWith(t, apitest.Options{Decoder: plainLog{}})
	p := env.Product("P")
	k := env.Key(p.ID)
	secret := env.AllMethodsToken()
	owner := vals("token", secret, "ProductId", strconv.FormatInt(p.ID, 10), "Key", k.Key)
	id := ok(t, env.Call("AddDataObjectToKey", with(owner, "Name", "n"))).ID

	r := env.Call("UploadValuesToKey", with(owner, "Id", strconv.FormatInt(id, 10), "Data", fmt.Sprintf("%d:+2,%d:+3", id, id)))
	if want := `{"result":0,"message":null,"applied":2,"known":0}`; r.Status != http.StatusOK || string(r.Body) != want {
		t.Fatalf("first upload: %d %s, want %s", r.Status, r.Body, want)
	}
	// The same log grown by one entry, sent in a query string with its '+' left unescaped as
	// some clients do: only the new entry counts.
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/data/uploadvaluestokey/?token=%s&productId=%d&key=%s&data=%d:+2,%d:+3,%d:-1",
		env.URL, secret, p.ID, k.Key, id, id, id), nil)
	r = env.Send(req)
	if want := `{"result":0,"message":null,"applied":1,"known":2}`; r.Status != http.StatusOK || string(r.Body) != want {
		t.Fatalf("second upload: %d %s, want %s", r.Status, r.Body, want)
	}
	if o, _ := env.Object(id); o.IntValue != 4 {
		t.Fatalf("value %d, want 4", o.IntValue)
	}
	// The general form, for the key as referencer; nothing new.
	r = env.Call("UploadValues", with(general(secret, domain.OwnerKey, k.ID), "Data", fmt.Sprintf("%d:+2,%d:+3,%d:-1", id, id, id)))
	if want := `{"result":0,"message":null,"applied":0,"known":3}`; r.Status != http.StatusOK || string(r.Body) != want {
		t.Fatalf("general upload: %d %s, want %s", r.Status, r.Body, want)
	}
	refused(t, env.Call("UploadValuesToKey", with(owner, "Data", "garbage")), 400, "Data parameter was corrupted.")
}
