package readmodel

import (
	"math"
	"time"
)

// level is a bucket size. Quarters (15 minutes) are exact for every zone offset in use (all
// are multiples of 15 minutes); hours, days and months are UTC rollups of the quarters, so
// that a long period reads a few coarse buckets and only its edges read fine ones.
type level uint8

const (
	levelQuarter level = iota
	levelHour
	levelDay
	levelMonth
	levels = 4
)

// quarterSeconds is the finest bucket and the alignment every bound must have.
const quarterSeconds = 900

var levelTables = [levels]string{"b_quarter", "b_hour", "b_day", "b_month"}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// index is the bucket of level l holding the instant sec (Unix seconds).
func (l level) index(sec int64) int64 {
	switch l {
	case levelQuarter:
		return floorDiv(sec, quarterSeconds)
	case levelHour:
		return floorDiv(sec, 3600)
	case levelDay:
		return floorDiv(sec, 86400)
	default:
		t := time.Unix(sec, 0).UTC()
		return int64(t.Year())*12 + int64(t.Month()) - 1
	}
}

// start is the first instant (Unix seconds) of bucket i of level l.
func (l level) start(i int64) int64 {
	switch l {
	case levelQuarter:
		return i * quarterSeconds
	case levelHour:
		return i * 3600
	case levelDay:
		return i * 86400
	default:
		y := floorDiv(i, 12)
		return time.Date(int(y), time.Month(i-y*12+1), 1, 0, 0, 0, 0, time.UTC).Unix()
	}
}

// bucketRange is the buckets [lo, hi) of one level.
type bucketRange struct {
	level  level
	lo, hi int64
}

// decompose splits [s, e) (Unix seconds, both multiples of 15 minutes) into the fewest whole
// buckets, coarsest first where they fit, appending them to out (merging a range with the
// previous one when they touch).
func decompose(out []bucketRange, s, e int64) []bucketRange {
	emit := func(l level, i int64) {
		if n := len(out); n > 0 && out[n-1].level == l && out[n-1].hi == i {
			out[n-1].hi++
			return
		}
		out = append(out, bucketRange{level: l, lo: i, hi: i + 1})
	}
	for cur := s; cur < e; {
		if m := levelMonth.index(cur); levelMonth.start(m) == cur {
			if next := levelMonth.start(m + 1); next <= e {
				emit(levelMonth, m)
				cur = next
				continue
			}
		}
		switch {
		case floorDiv(cur, 86400)*86400 == cur && cur+86400 <= e:
			emit(levelDay, levelDay.index(cur))
			cur += 86400
		case floorDiv(cur, 3600)*3600 == cur && cur+3600 <= e:
			emit(levelHour, levelHour.index(cur))
			cur += 3600
		default:
			emit(levelQuarter, levelQuarter.index(cur))
			cur += quarterSeconds
		}
	}
	return out
}

// suffix is the buckets covering [s, +inf): the pieces up to the next UTC month, then every
// month after.
func suffix(s int64) []bucketRange {
	m := levelMonth.index(s)
	if levelMonth.start(m) != s {
		m++
	}
	out := decompose(nil, s, levelMonth.start(m))
	return append(out, bucketRange{level: levelMonth, lo: m, hi: math.MaxInt64})
}

// aligned reports whether t is on a 15-minute boundary (so buckets answer exactly).
func aligned(t time.Time) bool {
	return t.Nanosecond() == 0 && floorDiv(t.Unix(), quarterSeconds)*quarterSeconds == t.Unix()
}
