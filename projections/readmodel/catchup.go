package readmodel

import (
	"context"
	"errors"
	"fmt"

	"github.com/tallyledger/tally/domain/eventstore"
)

// catchUpPage is how many events the catch-up reads from the store at a time.
const catchUpPage = 4096

// catchUpCheckpointPages is how many WAL pages trigger a checkpoint while catching up: a page
// that several batches rewrite is then copied into the database file once, not once a batch.
const catchUpCheckpointPages = 50000

// catchUp folds the stored events from the checkpoint to the store's head, one transaction per
// BatchEvents events. Three stages run at once, so that the work spreads over the processors: a
// reader reads the store ahead in pages, the fold (this goroutine, the only one that touches
// m.fold) folds a batch in memory and seals it, and a writer writes each sealed batch with its
// checkpoint in one transaction while the fold goes on with the next. Batches are committed
// in order and each holds exactly the events up to its checkpoint, so folding stays
// exactly-once; if a transaction fails, the fold is reloaded from the file and the error
// returned, as for a live batch.
func (m *Model) catchUp(ctx context.Context) error {
	conn := func(query string) error {
		_, err := m.writeDB.ExecContext(context.WithoutCancel(ctx), query)
		return err
	}
	if err := conn(fmt.Sprintf("PRAGMA wal_autocheckpoint = %d", catchUpCheckpointPages)); err != nil {
		return fmt.Errorf("read model: %w", err)
	}
	defer func() { _ = conn("PRAGMA wal_autocheckpoint = 1000") }() // SQLite's default, as the DSN leaves it

	rctx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	pages := make(chan []eventstore.RecordedEvent, 4)
	readErr := make(chan error, 1)
	from := m.fold.position // read here: the fold goroutine moves it from now on
	go func() {
		defer close(pages)
		for {
			evs, err := m.store.ReadAll(rctx, from, catchUpPage)
			if err != nil {
				readErr <- fmt.Errorf("read model: read the store: %w", err)
				return
			}
			if len(evs) == 0 {
				return
			}
			select {
			case pages <- evs:
			case <-rctx.Done():
				return
			}
			if len(evs) < catchUpPage {
				return // the head as of now: the subscription takes over from here
			}
			from = evs[len(evs)-1].Position
		}
	}()

	sealed := make(chan *batch, 1)
	writeErr := make(chan error, 1)
	writerStopped := make(chan struct{})
	go func() {
		defer close(writerStopped)
		for b := range sealed {
			if err := m.commitSealed(ctx, b); err != nil {
				writeErr <- err
				return
			}
		}
	}()
	send := func(b *batch) bool {
		b.seal(m.fold)
		select {
		case sealed <- b:
			return true
		case <-writerStopped:
			return false
		}
	}

	var err error
	b, n := m.fold.begin(), 0
fold:
	for {
		select {
		case evs, ok := <-pages:
			if !ok {
				break fold
			}
			for _, ev := range evs {
				m.apply(b, ev)
				if n++; n == m.opts.BatchEvents {
					if !send(b) {
						break fold
					}
					b, n = m.fold.begin(), 0
				}
			}
		case <-writerStopped:
			break fold
		case <-ctx.Done():
			err = ctx.Err()
			break fold
		}
	}
	if n > 0 && err == nil {
		send(b)
	}
	close(sealed)
	<-writerStopped
	stopReading()
	select {
	case werr := <-writeErr:
		err = werr
	default:
	}
	if err == nil {
		select {
		case rerr := <-readErr:
			err = rerr
		default:
		}
	}
	if err != nil {
		// The fold may be ahead of the file (batches sealed, not committed).
		m.reload(ctx)
		return err
	}
	if m.fold.position != m.Position() {
		return errors.New("read model: the catch-up ended with the fold ahead of the file")
	}
	return nil
}
