package projections

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"

	"github.com/tallyledger/tally/domain"
)

// HistoryAnomaly is an integrity anomaly as an object's history shows it: a later upload
// presented a layer that changed the object with other bytes than the ones applied
// (docs/uploads.md, "Tampering").
type HistoryAnomaly struct {
	domain.UploadIntegrityAnomaly
	Acknowledged bool   `json:"acknowledged,omitempty"`
	AckReason    string `json:"ackReason,omitempty"`
}

// attachIntegrity adds to a history the integrity anomalies of the layers that changed the
// object, and marks those entries with the anomalies' ids. It reads the owner's upload stream.
func attachIntegrity(ctx context.Context, r StreamReader, h *ObjectHistory) error {
	evs, err := readStream(ctx, r, domain.UploadStream(h.Owner))
	if err != nil {
		return err
	}
	var all []HistoryAnomaly
	// Layers applied before identity version 2 are named by their legacy identity in their
	// events, and by their identity in anomalies once re-identified (UploadPrepared.base, or
	// the anomaly that recognised them).
	legacyOf := map[string]string{}
	for _, ev := range evs {
		switch ev.Type {
		case domain.EventUploadPrepared:
			p, err := domain.DecodeUploadPrepared(ev.Data)
			if err != nil {
				return fmt.Errorf("decode %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			if p.Base != nil {
				legacyOf[p.Base.Layer] = p.Base.Legacy
			}
		case domain.EventUploadIntegrityAnomaly:
			var a domain.UploadIntegrityAnomaly
			if err := json.Unmarshal(ev.Data, &a); err != nil {
				return fmt.Errorf("decode %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			if a.Alias != nil {
				legacyOf[a.Alias.Layer] = a.Alias.Legacy
			}
			all = append(all, HistoryAnomaly{UploadIntegrityAnomaly: a})
		case domain.EventUploadIntegrityAcknowledged:
			var a domain.UploadIntegrityAcknowledged
			if err := json.Unmarshal(ev.Data, &a); err != nil {
				return fmt.Errorf("decode %s %d@%s: %w", ev.Type, ev.Revision, ev.Stream, err)
			}
			for i := range all {
				if all[i].AnomalyID == a.AnomalyID {
					all[i].Acknowledged, all[i].AckReason = true, a.Reason
				}
			}
		}
	}
	if len(all) == 0 {
		return nil
	}
	byLayer := map[string][]uuid.UUID{}
	for _, a := range all {
		byLayer[a.Layer] = append(byLayer[a.Layer], a.AnomalyID)
		if legacy, ok := legacyOf[a.Layer]; ok {
			byLayer[legacy] = append(byLayer[legacy], a.AnomalyID)
		}
	}
	attached := map[uuid.UUID]bool{}
	for i := range h.Entries {
		e := &h.Entries[i]
		if ids := byLayer[e.Layer]; e.Layer != "" && len(ids) > 0 {
			e.IntegrityAnomalies = ids
			for _, id := range ids {
				attached[id] = true
			}
		}
	}
	for _, a := range all {
		if attached[a.AnomalyID] {
			h.IntegrityAnomalies = append(h.IntegrityAnomalies, a)
		}
	}
	return nil
}
