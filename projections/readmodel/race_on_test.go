//go:build race

package readmodel_test

// underRace thins the oracle comparisons when the race detector runs (CI): SQLite in pure Go
// runs many times slower under it, and the comparisons are deterministic, so the full set runs
// without -race (go test ./projections/readmodel) and a quarter of it with.
const underRace = true
