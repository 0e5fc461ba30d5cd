// Package projections holds Tally's read models, each folded from the event history and
// rebuildable from zero: Current keeps the domain's decision state (package domain/state) up to
// date from a catch-up subscription and persists it with its checkpoint; Rebuild, CatchUp and
// Verify replay the store; the audit and billing read models answer history, value-as-of and
// usage queries.
package projections
