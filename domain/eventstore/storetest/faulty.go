package storetest

import (
	"context"
	"errors"
	"sync"

	"github.com/tallyledger/tally/domain/eventstore"
)

// ErrInjected is the failure a Faulty store returns where a test asked for one.
var ErrInjected = errors.New("injected store failure")

// Faulty wraps a store and fails the appends a rule picks, before they reach the store: the
// commit boundary where a disk error, a lost connection or a dying process would strike.
type Faulty struct {
	eventstore.Store
	mu   sync.Mutex
	rule func(stream string, events []eventstore.EventData) error
}

// NewFaulty wraps s; it fails nothing until FailAppends is called.
func NewFaulty(s eventstore.Store) *Faulty { return &Faulty{Store: s} }

// FailAppends makes every later append for which rule returns an error fail with that error,
// writing nothing. A nil rule lets every append through again.
func (f *Faulty) FailAppends(rule func(stream string, events []eventstore.EventData) error) {
	f.mu.Lock()
	f.rule = rule
	f.mu.Unlock()
}

// Append applies the rule, then appends.
func (f *Faulty) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	f.mu.Lock()
	rule := f.rule
	f.mu.Unlock()
	if rule != nil {
		if err := rule(stream, events); err != nil {
			return eventstore.AppendResult{}, err
		}
	}
	return f.Store.Append(ctx, stream, expected, events...)
}
