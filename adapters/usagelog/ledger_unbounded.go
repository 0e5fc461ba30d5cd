package usagelog

import (
	"context"
	"math"

	"github.com/tallyledger/tally/domain/ledger"
)

// DecodeUnbounded implements ledger.UnboundedLogDecoder: Decode without the limit on new
// layers. Only an operator's decision on a refused log asks for it; the input-size limit still
// bounds the work, at one RSA operation per new layer.
func (d *LedgerDecoder) DecodeUnbounded(ctx context.Context, data string, known func(ledger.LayerRef) bool) (*ledger.DecodedLog, error) {
	unbounded := *d.Decoder
	unbounded.MaxNewLayers = math.MaxInt
	return (&LedgerDecoder{Decoder: &unbounded}).Decode(ctx, data, known)
}

var _ ledger.UnboundedLogDecoder = (*LedgerDecoder)(nil)
