package kurrenttest

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	streamspb "github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Append handles one append request: an options message, then the proposed events.
func (s *Server) Append(stream streamspb.Streams_AppendServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	options := first.GetOptions()
	if options == nil || len(options.GetStreamIdentifier().GetStreamName()) == 0 {
		return status.Error(codes.InvalidArgument, "append: the first message must carry the options and a stream name")
	}
	name := string(options.GetStreamIdentifier().GetStreamName())

	var proposed []*record
	size := 0
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		message := msg.GetProposedMessage()
		if message == nil {
			return status.Error(codes.InvalidArgument, "append: expected a proposed message")
		}
		event, err := proposedRecord(message)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		// Like KurrentDB, count the size while receiving and refuse as soon as it is exceeded.
		size += len(event.data) + len(event.customMetadata) + len(event.eventType)
		if size > DefaultMaxAppendSize {
			stream.SetTrailer(metadata.Pairs(
				"exception", "maximum-append-size-exceeded",
				"maximum-append-size", strconv.Itoa(DefaultMaxAppendSize),
			))
			return status.Errorf(codes.InvalidArgument, "Maximum Append Size of %d Exceeded.", DefaultMaxAppendSize)
		}
		proposed = append(proposed, event)
	}

	if err := s.takeFault(&s.failBefore); err != nil {
		return err
	}
	response := s.commit(name, options, proposed)
	if err := s.takeFault(&s.failAfter); err != nil {
		return err
	}
	return stream.SendAndClose(response)
}

// proposedRecord checks a proposed event the way KurrentDB does (id, type and content type are
// required) and turns it into an uncommitted record.
func proposedRecord(message *streamspb.AppendReq_ProposedMessage) (*record, error) {
	id, err := parseUUID(message.GetId())
	if err != nil {
		return nil, fmt.Errorf("append: event id: %w", err)
	}
	eventType, ok := message.GetMetadata()["type"]
	if !ok {
		return nil, errors.New("append: required metadata property missing: type")
	}
	contentType, ok := message.GetMetadata()["content-type"]
	if !ok {
		return nil, errors.New("append: required metadata property missing: content-type")
	}
	return &record{
		id:             id,
		eventType:      eventType,
		contentType:    contentType,
		customMetadata: message.GetCustomMetadata(),
		data:           message.GetData(),
	}, nil
}

// expectation is an append's expected revision in the server's terms.
type expectation struct {
	any, noStream, streamExists bool
	revision                    uint64
}

func expectationOf(options *streamspb.AppendReq_Options) expectation {
	switch option := options.GetExpectedStreamRevision().(type) {
	case *streamspb.AppendReq_Options_Revision:
		return expectation{revision: option.Revision}
	case *streamspb.AppendReq_Options_NoStream:
		return expectation{noStream: true}
	case *streamspb.AppendReq_Options_StreamExists:
		return expectation{streamExists: true}
	default:
		return expectation{any: true}
	}
}

// commit applies the append atomically: all events with consecutive revisions, or none.
func (s *Server) commit(name string, options *streamspb.AppendReq_Options, events []*record) *streamspb.AppendResp {
	expected := expectationOf(options)
	s.mu.Lock()
	defer s.mu.Unlock()
	current := s.streams[name]

	if original, ok := s.idempotentMatch(name, current, expected, events); ok {
		return success(original[len(original)-1])
	}
	exists := len(current) > 0
	var last uint64
	if exists {
		last = uint64(len(current) - 1)
	}
	switch {
	case expected.any:
	case expected.noStream && exists,
		expected.streamExists && !exists,
		!expected.noStream && !expected.streamExists && (!exists || last != expected.revision):
		return wrongExpectedVersion(expected, last, exists)
	}

	if len(events) == 0 {
		// Nothing to write: report the stream's state.
		if !exists {
			return &streamspb.AppendResp{Result: &streamspb.AppendResp_Success_{Success: &streamspb.AppendResp_Success{
				CurrentRevisionOption: &streamspb.AppendResp_Success_NoStream{NoStream: &shared.Empty{}},
				PositionOption:        &streamspb.AppendResp_Success_NoPosition{NoPosition: &shared.Empty{}},
			}}}
		}
		return success(current[len(current)-1])
	}

	now := time.Now().UTC()
	for i, event := range events {
		event.stream = name
		event.revision = uint64(len(current) + i)
		event.position = s.nextPosition
		event.created = now
		if s.densePositions {
			s.nextPosition++
		} else {
			s.nextPosition += uint64(recordOverhead + len(name) + len(event.eventType) + len(event.data) + len(event.customMetadata))
		}
		s.remember(event)
	}
	s.streams[name] = append(current, events...)
	s.log = append(s.log, events...)
	close(s.appended)
	s.appended = make(chan struct{})
	return success(events[len(events)-1])
}

// idempotentMatch finds the events of an earlier identical append. With an exact expected
// revision or NoStream the events after that revision must carry the same IDs in order; with Any
// or StreamExists the first ID is looked up in the bounded recent-ID cache.
func (s *Server) idempotentMatch(name string, current []*record, expected expectation, events []*record) ([]*record, bool) {
	if len(events) == 0 {
		return nil, false
	}
	var start uint64
	switch {
	case expected.noStream:
		start = 0
	case expected.any || expected.streamExists:
		first, ok := s.recentIDs[events[0].id]
		if !ok || first.stream != name {
			return nil, false
		}
		start = first.revision
	default:
		start = expected.revision + 1
	}
	if start+uint64(len(events)) > uint64(len(current)) {
		return nil, false
	}
	original := current[start : start+uint64(len(events))]
	for i, event := range events {
		if original[i].id != event.id {
			return nil, false
		}
	}
	return original, true
}

// remember adds a committed event to the bounded idempotency cache, evicting the oldest.
func (s *Server) remember(event *record) {
	if len(s.recentOrder) >= idempotencyCacheSize {
		delete(s.recentIDs, s.recentOrder[0])
		s.recentOrder = s.recentOrder[1:]
	}
	s.recentIDs[event.id] = event
	s.recentOrder = append(s.recentOrder, event.id)
}

func success(last *record) *streamspb.AppendResp {
	return &streamspb.AppendResp{Result: &streamspb.AppendResp_Success_{Success: &streamspb.AppendResp_Success{
		CurrentRevisionOption: &streamspb.AppendResp_Success_CurrentRevision{CurrentRevision: last.revision},
		PositionOption: &streamspb.AppendResp_Success_Position{Position: &streamspb.AppendResp_Position{
			CommitPosition:  last.position,
			PreparePosition: last.position,
		}},
	}}}
}

// wrongExpectedVersion is KurrentDB's answer to a failed concurrency check: a normal response,
// not a gRPC error, filled in both the current and the pre-20.6 fields.
func wrongExpectedVersion(expected expectation, last uint64, exists bool) *streamspb.AppendResp {
	wrong := &streamspb.AppendResp_WrongExpectedVersion{}
	if exists {
		wrong.CurrentRevisionOption = &streamspb.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: last}
		wrong.CurrentRevisionOption_20_6_0 = &streamspb.AppendResp_WrongExpectedVersion_CurrentRevision_20_6_0{CurrentRevision_20_6_0: last}
	} else {
		wrong.CurrentRevisionOption = &streamspb.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		wrong.CurrentRevisionOption_20_6_0 = &streamspb.AppendResp_WrongExpectedVersion_NoStream_20_6_0{NoStream_20_6_0: &shared.Empty{}}
	}
	switch {
	case expected.noStream:
		wrong.ExpectedRevisionOption = &streamspb.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
	case expected.streamExists:
		wrong.ExpectedRevisionOption = &streamspb.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
		wrong.ExpectedRevisionOption_20_6_0 = &streamspb.AppendResp_WrongExpectedVersion_StreamExists_20_6_0{StreamExists_20_6_0: &shared.Empty{}}
	case expected.any:
		wrong.ExpectedRevisionOption = &streamspb.AppendResp_WrongExpectedVersion_ExpectedAny{ExpectedAny: &shared.Empty{}}
		wrong.ExpectedRevisionOption_20_6_0 = &streamspb.AppendResp_WrongExpectedVersion_Any_20_6_0{Any_20_6_0: &shared.Empty{}}
	default:
		wrong.ExpectedRevisionOption = &streamspb.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: expected.revision}
		wrong.ExpectedRevisionOption_20_6_0 = &streamspb.AppendResp_WrongExpectedVersion_ExpectedRevision_20_6_0{ExpectedRevision_20_6_0: expected.revision}
	}
	return &streamspb.AppendResp{Result: &streamspb.AppendResp_WrongExpectedVersion_{WrongExpectedVersion: wrong}}
}
