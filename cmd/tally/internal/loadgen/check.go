package loadgen

import (
	"context"
	"fmt"
)

// maxProblems bounds the problems a check lists.
const maxProblems = 20

// checkData reads every object's final value and compares it with what was acknowledged:
// an increment object holds at least its acknowledged calls and at most those plus its failed
// ones; an upload's objects hold its entries if it was acknowledged, and either all or none of
// them if it failed (uploads are all or nothing).
func checkData(ctx context.Context, api *apiClient, fx *fixture, res driveResult, uploads []*preparedUpload) (DataCheck, error) {
	a, err := api.do(ctx, "ListDataObjects", form("token", fx.secret, "ShowAll", "true"))
	if err != nil {
		return DataCheck{}, err
	}
	values := make(map[int64]int64, len(a.DataObjects))
	for _, o := range a.DataObjects {
		values[o.ID] = int64(o.IntValue)
	}
	c := DataCheck{OK: true}
	problem := func(format string, args ...any) {
		c.OK = false
		if len(c.Problems) < maxProblems {
			c.Problems = append(c.Problems, fmt.Sprintf(format, args...))
		}
	}
	for i, id := range fx.incObjects {
		c.Objects++
		v, ok := values[id]
		acked, failed := res.incAcked[i], res.incFailed[i]
		if !ok || v < acked || v > acked+failed {
			c.Lost++
			problem("object %d holds %d after %d acknowledged and %d failed increments of 1", id, v, acked, failed)
		}
	}
	for _, u := range uploads {
		c.Objects += len(u.objects)
		matches := func(want map[int64]int64) bool {
			for _, id := range u.objects {
				if values[id] != want[id] {
					return false
				}
			}
			return true
		}
		switch {
		case !u.done || u.err != nil:
			if matches(u.expected) {
				if u.done {
					c.UnacknowledgedApplied++
				}
			} else if !matches(u.base) {
				c.Lost += len(u.objects)
				problem("key %d: a failed or unsent upload left its objects neither applied nor untouched", u.key.ID)
			}
		case !matches(u.expected):
			c.Lost += len(u.objects)
			problem("key %d: an acknowledged upload's entries are not all in the values", u.key.ID)
		case u.result.Applied != newEntries(u) || u.result.Known != u.history:
			c.Lost += len(u.objects)
			problem("key %d: the upload answered applied=%d known=%d, not %d and %d", u.key.ID, u.result.Applied, u.result.Known, newEntries(u), u.history)
		}
	}
	return c, nil
}

// newEntries counts the upload's new entries: what it adds on top of the history.
func newEntries(u *preparedUpload) int {
	n := int64(0)
	for id, v := range u.expected {
		n += v - u.base[id]
	}
	return int(n)
}
