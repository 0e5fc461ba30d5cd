package loadgen

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/tallyledger/tally/adapters/httpapi"
	"github.com/tallyledger/tally/adapters/usagelog"
	"github.com/tallyledger/tally/domain"
)

// layerBytes is the size of one layer written for a 2048-bit key (about 310 bytes), used to
// size a seeded history like the real file of that many entries.
const layerBytes = 310

// fixture is what provisioning created.
type fixture struct {
	productID int64
	tokenID   uuid.UUID
	secret    string
	// created lists every data object the run added, with its key, for RemoveObjects.
	created []createdObject
	// The increment clients' key, objects and prepared request bodies (one per object).
	incKey     httpapi.LicenseKey
	incObjects []int64
	incBodies  [][]byte
	addMu      sync.Mutex // serialises AddDataObject calls (and guards created)
}

// createdObject is a data object the run added.
type createdObject struct {
	key httpapi.LicenseKey
	id  int64
}

// preparedUpload is one usage log ready to send, with what it should do.
type preparedUpload struct {
	key     httpapi.LicenseKey
	objects []int64
	// expected is each object's value once the history and this upload are applied; base its
	// value with the history only.
	expected, base map[int64]int64
	body           []byte
	history        int64 // entries of the file already applied

	done   bool
	result apiAnswer
	err    error
}

// provision creates the product, the token, and the increment clients' key and objects.
func provision(ctx context.Context, cfg Config, admin *httpapi.AdminClient, api *apiClient) (*fixture, error) {
	p, err := admin.CreateProduct(ctx, fmt.Sprintf("bench-%d", time.Now().UnixNano()))
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	methods := make([]string, len(domain.AllMethods))
	for i, m := range domain.AllMethods {
		methods[i] = string(m)
	}
	tok, err := admin.CreateToken(ctx, httpapi.CreateTokenRequest{Name: "bench", Methods: methods, ProductLock: p.ID})
	if err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	fx := &fixture{productID: p.ID, tokenID: tok.ID, secret: tok.Secret}
	if cfg.Clients > cfg.UploadClients {
		if fx.incKey, err = admin.CreateKey(ctx, p.ID); err != nil {
			return nil, fmt.Errorf("provision: %w", err)
		}
		if fx.incObjects, err = addObjects(ctx, api, fx, fx.incKey, cfg.Objects); err != nil {
			return nil, err
		}
		for _, id := range fx.incObjects {
			fx.incBodies = append(fx.incBodies, form("token", fx.secret, "ProductId", itoa(p.ID), "Key", fx.incKey.Key, "Id", itoa(id), "IntValue", "1"))
		}
	}
	cfg.Progress("provisioned product %d, %d increment objects", p.ID, len(fx.incObjects))
	return fx, nil
}

// addObjects adds n data objects to a key, one at a time: concurrent AddDataObject calls compete
// for the next id, and 8 at a time already exhaust the ledger's retries now and then.
func addObjects(ctx context.Context, api *apiClient, fx *fixture, key httpapi.LicenseKey, n int) ([]int64, error) {
	ids := make([]int64, n)
	fx.addMu.Lock()
	defer fx.addMu.Unlock()
	for i := range ids {
		a, err := api.do(ctx, "AddDataObjectToKey", form("token", fx.secret, "ProductId", itoa(fx.productID), "Key", key.Key, "Name", fmt.Sprintf("bench-%d", i)))
		if err != nil {
			return nil, fmt.Errorf("provision: %w", err)
		}
		ids[i] = a.ID
		fx.created = append(fx.created, createdObject{key: key, id: a.ID})
	}
	return ids, nil
}

// prepareUploads writes the usage logs, each for a key of its own with its history in place,
// on all cores, before the clock starts.
func prepareUploads(ctx context.Context, cfg Config, fx *fixture, admin *httpapi.AdminClient, api *apiClient) ([]*preparedUpload, error) {
	out := make([]*preparedUpload, cfg.Uploads)
	var mu sync.Mutex
	doneCount := 0
	err := forEach(ctx, len(out), runtime.GOMAXPROCS(0), func(ctx context.Context, i int) error {
		history := cfg.History
		if cfg.CompareFresh && i%2 == 1 {
			history = 0
		}
		u, err := prepareUpload(ctx, cfg, history, fx, api, admin)
		if err != nil {
			return err
		}
		out[i] = u
		mu.Lock()
		doneCount++
		cfg.Progress("prepared upload %d of %d (%d bytes of form body)", doneCount, len(out), len(u.body))
		mu.Unlock()
		return nil
	})
	return out, err
}

func prepareUpload(ctx context.Context, cfg Config, history int, fx *fixture, api *apiClient, admin *httpapi.AdminClient) (*preparedUpload, error) {
	key, err := admin.CreateKey(ctx, fx.productID)
	if err != nil {
		return nil, fmt.Errorf("prepare upload: %w", err)
	}
	objects, err := addObjects(ctx, api, fx, key, cfg.ObjectsPerUpload)
	if err != nil {
		return nil, err
	}
	u := &preparedUpload{key: key, objects: objects, expected: map[int64]int64{}, base: map[int64]int64{}, history: int64(history)}
	ts := time.Now().Add(-time.Hour).Unix() - int64(history)
	var file []byte
	switch {
	case history == 0:
	case cfg.SeedHistory != nil:
		if file, err = opaqueLayer(cfg.PublicKey, history*layerBytes); err != nil {
			return nil, err
		}
		id, err := usagelog.LayerIDOf(file)
		if err != nil {
			return nil, fmt.Errorf("prepare upload: seeded history: %w", err)
		}
		if err := cfg.SeedHistory(ctx, key.ID, id, int64(history), ts); err != nil {
			return nil, fmt.Errorf("prepare upload: seed history: %w", err)
		}
		ts++
	default:
		// Real layers, uploaded at most 1000 at a time as a License Server would.
		for written := 0; written < history; {
			n := min(1000, history-written)
			for j := range n {
				obj := objects[(written+j)%len(objects)]
				if file, err = usagelog.Record(file, cfg.PublicKey, obj, 1, ts, false); err != nil {
					return nil, fmt.Errorf("prepare upload: history: %w", err)
				}
				ts++
				u.base[obj]++
			}
			written += n
			a, err := api.upload(ctx, uploadBody(fx, key, file))
			if err != nil {
				return nil, fmt.Errorf("prepare upload: upload history: %w", err)
			}
			if a.Applied != n {
				return nil, fmt.Errorf("prepare upload: history upload applied %d of %d entries", a.Applied, n)
			}
		}
	}
	for obj, v := range u.base {
		u.expected[obj] = v
	}
	for j := range cfg.NewEntries {
		obj := objects[j%len(objects)]
		if file, err = usagelog.Record(file, cfg.PublicKey, obj, 1, ts, false); err != nil {
			return nil, fmt.Errorf("prepare upload: %w", err)
		}
		ts++
		u.expected[obj]++
	}
	u.body = uploadBody(fx, key, file)
	return u, nil
}

func uploadBody(fx *fixture, key httpapi.LicenseKey, file []byte) []byte {
	return form("token", fx.secret, "ProductId", itoa(fx.productID), "Key", key.Key, "Data", base64.StdEncoding.EncodeToString(file))
}

// opaqueLayer is a well-formed outer layer (a random IV, a real RSA-wrapped AES key) whose
// EncryptedObject is size random bytes: a stand-in for a history the server already knows,
// which the decoder never opens.
func opaqueLayer(pub *rsa.PublicKey, size int) ([]byte, error) {
	size = (size + 15) / 16 * 16
	iv, key, obj := make([]byte, 16), make([]byte, 16), make([]byte, size)
	rand.Read(iv)
	rand.Read(key)
	rand.Read(obj)
	//lint:ignore SA1019 the usage-log format mandates PKCS#1 v1.5 encryption
	encKey, err := rsa.EncryptPKCS1v15(rand.Reader, pub, key)
	if err != nil {
		return nil, fmt.Errorf("opaque layer: %w", err)
	}
	var buf bytes.Buffer
	buf.Grow(size + len(encKey) + 32)
	enc := msgpack.NewEncoder(&buf)
	if err := errors.Join(enc.EncodeArrayLen(3), enc.EncodeBytes(iv), enc.EncodeBytes(encKey), enc.EncodeBytes(obj)); err != nil {
		return nil, fmt.Errorf("opaque layer: %w", err)
	}
	return buf.Bytes(), nil
}

// forEach runs fn for 0..n-1 on at most limit goroutines and returns the first error; after
// one, the others' ctx is cancelled and no new call starts.
func forEach(ctx context.Context, n, limit int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, max(1, limit))
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// removeCreated removes every data object the run added (RemoveDataObjectToKey: their events
// stay in the ledger, as every removal's do) and revokes the run's token, so that a run against
// a live server leaves nothing a customer's application could see or use. It goes on past
// failures and reports the first.
func removeCreated(ctx context.Context, cfg Config, fx *fixture, admin *httpapi.AdminClient, api *apiClient) *Cleanup {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	fx.addMu.Lock()
	created := append([]createdObject(nil), fx.created...)
	fx.addMu.Unlock()
	c := &Cleanup{ProductID: fx.productID}
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if c.Error == "" {
			c.Error = err.Error()
		}
	}
	// forEach stops at the first error; each removal reports its own and carries on.
	_ = forEach(ctx, len(created), 8, func(ctx context.Context, i int) error {
		o := created[i]
		if _, err := api.do(ctx, "RemoveDataObjectToKey", form("token", fx.secret, "ProductId", itoa(fx.productID), "Key", o.key.Key, "Id", itoa(o.id))); err != nil {
			fail(fmt.Errorf("remove data object %d: %w", o.id, err))
			return nil
		}
		mu.Lock()
		c.ObjectsRemoved++
		mu.Unlock()
		return nil
	})
	if _, err := admin.RevokeToken(ctx, fx.tokenID); err != nil {
		fail(fmt.Errorf("revoke the bench token: %w", err))
	} else {
		c.TokenRevoked = true
	}
	cfg.Progress("removed %d of %d data objects, token revoked: %v", c.ObjectsRemoved, len(created), c.TokenRevoked)
	return c
}
