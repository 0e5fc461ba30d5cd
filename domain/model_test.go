package domain

import (
	"errors"
	"math"
	"testing"
)

func TestApplyChange(t *testing.T) {
	cases := []struct {
		name    string
		current int32
		dir     Direction
		amount  int64
		bounded bool
		bound   int64
		want    int32
		err     error
	}{
		{"increment", 5, Increment, 3, false, 0, 8, nil},
		{"decrement below zero", 5, Decrement, 8, false, 0, -3, nil},
		{"to MaxInt32 exactly", math.MaxInt32 - 2, Increment, 2, false, 0, math.MaxInt32, nil},
		{"past MaxInt32", math.MaxInt32 - 2, Increment, 3, false, 0, math.MaxInt32 - 2, ErrInt32Limit},
		{"to MinInt32 exactly", math.MinInt32 + 2, Decrement, 2, false, 0, math.MinInt32, nil},
		{"past MinInt32", math.MinInt32 + 2, Decrement, 3, false, 0, math.MinInt32 + 2, ErrInt32Limit},
		{"amount of 2^31", 0, Decrement, 1 << 31, false, 0, math.MinInt32, nil},
		{"upper bound reached exactly", 8, Increment, 2, true, 10, 10, nil},
		{"upper bound passed", 8, Increment, 3, true, 10, 8, ErrBoundReached},
		{"lower bound reached exactly", 2, Decrement, 2, true, 0, 0, nil},
		{"lower bound passed", 2, Decrement, 3, true, 0, 2, ErrBoundReached},
		{"bound not applied when disabled", 8, Increment, 3, false, 10, 11, nil},
		{"int32 checked before the bound", math.MaxInt32, Increment, 1, true, math.MaxInt64, math.MaxInt32, ErrInt32Limit},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ApplyChange(c.current, c.dir, c.amount, c.bounded, c.bound)
			if got != c.want || !errors.Is(err, c.err) {
				t.Fatalf("ApplyChange = %d, %v; want %d, %v", got, err, c.want, c.err)
			}
		})
	}
}

func TestTokenLocks(t *testing.T) {
	productOf := func(keyID int64) (int64, bool) {
		switch keyID {
		case 10:
			return 1, true
		case 20:
			return 2, true
		}
		return 0, false
	}
	key := func(id int64) Owner { return Owner{Type: OwnerKey, ID: id} }
	product := func(id int64) Owner { return Owner{Type: OwnerProduct, ID: id} }
	user := Owner{Type: OwnerUser}
	cases := []struct {
		name  string
		tok   Token
		owner Owner
		want  error
	}{
		{"no locks reach the account", Token{}, user, nil},
		{"no locks reach any key", Token{}, key(20), nil},
		{"product lock reaches its keys", Token{ProductLock: 1}, key(10), nil},
		{"product lock keeps other products' keys out", Token{ProductLock: 1}, key(20), ErrProductNotFound},
		{"product lock keeps other products out", Token{ProductLock: 1}, product(2), ErrProductNotFound},
		{"product lock keeps the account out", Token{ProductLock: 1}, user, ErrAccessDenied},
		{"negative key lock: no general methods", Token{KeyLock: -1}, key(10), ErrAccessDenied},
		{"positive key lock reaches its key", Token{KeyLock: 10}, key(10), nil},
		{"positive key lock keeps other keys out", Token{KeyLock: 10}, key(20), ErrKeyNotFound},
		{"positive key lock keeps products out", Token{KeyLock: 10}, product(1), ErrAccessDenied},
		{"unknown key", Token{}, key(30), ErrKeyNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := c.tok.CheckGeneral(c.owner, productOf); !errors.Is(err, c.want) {
				t.Fatalf("CheckGeneral = %v, want %v", err, c.want)
			}
		})
	}
	if err := (Token{KeyLock: 10}).CheckKeySpecific(); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("a positive key lock on a key-specific method: %v", err)
	}
	if err := (Token{KeyLock: -1}).CheckKeySpecific(); err != nil {
		t.Fatalf("a negative key lock on a key-specific method: %v", err)
	}
	if err := (Token{FeatureLock: 1}).CheckAmount(2); !errors.Is(err, ErrFeatureLock) {
		t.Fatalf("feature lock 1, amount 2: %v", err)
	}
	if err := (Token{FeatureLock: 1}).CheckAmount(1); err != nil {
		t.Fatalf("feature lock 1, amount 1: %v", err)
	}
}

func TestSecretMatchesOnlyItsOwnSecret(t *testing.T) {
	tok := Token{SecretHash: HashSecret("right")}
	if !tok.SecretMatches("right") || tok.SecretMatches("wrong") || tok.SecretMatches("") {
		t.Fatal("SecretMatches accepted the wrong secret or refused the right one")
	}
}

func TestUploadStreamNamesRoundTrip(t *testing.T) {
	for _, o := range []Owner{{OwnerUser, 0}, {OwnerProduct, 7}, {OwnerKey, 123456789}} {
		got, ok := ParseUploadStream(UploadStream(o))
		if !ok || got != o {
			t.Fatalf("ParseUploadStream(UploadStream(%v)) = %v, %v", o, got, ok)
		}
	}
	for _, s := range []string{"upload-", "upload-2", "upload-2.x", "dataobject-1", "upload-2.1x"} {
		if _, ok := ParseUploadStream(s); ok {
			t.Fatalf("ParseUploadStream(%q) accepted a malformed name", s)
		}
	}
}

func TestDirectionNamesItsEventAndMethod(t *testing.T) {
	cases := []struct {
		dir    Direction
		event  string
		method Method
	}{
		{Increment, EventIncrementApplied, MethodIncrementIntValue},
		{Decrement, EventDecrementApplied, MethodDecrementIntValue},
	}
	for _, c := range cases {
		if got := c.dir.EventType(); got != c.event {
			t.Errorf("%v.EventType() = %q, want %q", c.dir, got, c.event)
		}
		if got := c.dir.Method(); got != c.method {
			t.Errorf("%v.Method() = %q, want %q", c.dir, got, c.method)
		}
		if got := DirectionOf(c.event); got != c.dir {
			t.Errorf("DirectionOf(%q) = %v, want %v", c.event, got, c.dir)
		}
	}
}
