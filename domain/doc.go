// Package domain holds what Tally's ledger is about: products, license keys, access tokens and
// data objects, the events that record every change to them, and the rules that decide whether a
// change is allowed (permissions, locks, bounds, int32 range). It knows nothing of HTTP, storage
// or the usage-log format.
package domain
