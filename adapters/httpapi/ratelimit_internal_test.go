package httpapi

import (
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestTokenLimiterBuckets(t *testing.T) {
	l := newTokenLimiter(1, 3)
	a, b := uuid.New(), uuid.New()
	t0 := time.Unix(1767225600, 0)
	for i := range 3 {
		if !l.allow(a, t0) {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	if l.allow(a, t0) {
		t.Fatal("a fourth request at once was allowed with a burst of 3")
	}
	if !l.allow(b, t0) {
		t.Fatal("another token was limited by the first one's requests")
	}
	if !l.allow(a, t0.Add(time.Second)) || l.allow(a, t0.Add(time.Second)) {
		t.Fatal("one second at 1/s should refill exactly one request")
	}
}

func TestTokenLimiterDefaultsAndOff(t *testing.T) {
	if newTokenLimiter(0, 10) != nil || newTokenLimiter(-1, 10) != nil {
		t.Fatal("a non-positive rate should mean no limiter")
	}
	if l := newTokenLimiter(5, 0); l.burst != 10 {
		t.Fatalf("default burst %d, want twice the rate", l.burst)
	}
}

// TestTokenLimiterEvictsIdleBuckets checks that memory follows the tokens in use, not every
// token ever seen, and that dropping a bucket changes no answer: it was full again.
func TestTokenLimiterEvictsIdleBuckets(t *testing.T) {
	l := newTokenLimiter(10, 20) // refills in 2 s
	t0 := time.Unix(1767225600, 0)
	hot := uuid.New()
	for range 20 {
		l.allow(hot, t0)
	}
	for range 10000 {
		l.allow(uuid.New(), t0)
	}
	if n := l.size(); n != 10001 {
		t.Fatalf("%d buckets, want 10001", n)
	}
	later := t0.Add(2 * time.Second)
	if !l.allow(hot, later) {
		t.Fatal("the hot token was not refilled after the refill period")
	}
	if n := l.size(); n != 1 {
		t.Fatalf("%d buckets after the idle ones' refill period, want 1", n)
	}
	// The evicted hot bucket was recreated full: 19 more at once, then refused.
	for i := range 19 {
		if !l.allow(hot, later) {
			t.Fatalf("request %d refused after eviction", i+2)
		}
	}
	if l.allow(hot, later) {
		t.Fatal("burst exceeded after eviction")
	}
}
