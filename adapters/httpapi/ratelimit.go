package httpapi

import (
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"
)

// Default per-token rate limit. A Cryptolens access token is usually built into every
// installed copy of a vendor's application, so one token carries a whole fleet's traffic: the
// limit is a guard against a runaway or stolen token, not a fair share. It is set above what
// one Tally instance serves (about 20,000 requests/s on the reference machine, all on one
// token), so that it never throttles a healthy deployment or the project's own load
// benchmark; lower it with --rate-limit where many tokens share a server.
const (
	DefaultRateLimit = 50000  // requests per second per token
	DefaultRateBurst = 100000 // requests a token may send at once after being idle
)

// tokenLimiter is a token bucket per access token. A bucket that has stood idle long enough
// to be full again is indistinguishable from a new one, so it is dropped: the map holds only
// the tokens active within the last refill period.
type tokenLimiter struct {
	limit rate.Limit
	burst int
	// idle is how long an unused bucket takes to fill up: after that it is evicted.
	idle time.Duration

	mu        sync.Mutex
	buckets   map[uuid.UUID]*bucket
	lastSweep time.Time
}

type bucket struct {
	limiter  *rate.Limiter
	lastUsed time.Time
}

// newTokenLimiter returns a limiter of perSecond requests per token with the given burst, or
// nil (no limit) when perSecond is not positive.
func newTokenLimiter(perSecond float64, burst int) *tokenLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(2*perSecond))
	}
	idle := time.Duration(float64(burst) / perSecond * float64(time.Second))
	return &tokenLimiter{
		limit: rate.Limit(perSecond), burst: burst, idle: max(idle, time.Second),
		buckets: map[uuid.UUID]*bucket{},
	}
}

// allow takes one request from the token's bucket at time now and reports whether it was
// there.
func (l *tokenLimiter) allow(id uuid.UUID, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) >= l.idle {
		l.sweep(now)
	}
	b := l.buckets[id]
	if b == nil {
		b = &bucket{limiter: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[id] = b
	}
	b.lastUsed = now
	return b.limiter.AllowN(now, 1)
}

// sweep drops the buckets idle for at least the refill period. It runs at most once per
// period, so its cost is spread over the requests of that period.
func (l *tokenLimiter) sweep(now time.Time) {
	for id, b := range l.buckets {
		if now.Sub(b.lastUsed) >= l.idle {
			delete(l.buckets, id)
		}
	}
	l.lastSweep = now
}

// size is the number of buckets held.
func (l *tokenLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
