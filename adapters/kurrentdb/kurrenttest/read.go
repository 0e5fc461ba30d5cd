package kurrenttest

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	streamspb "github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// readBatch bounds how many records a read or subscription takes from the log per lock.
const readBatch = 256

// Read serves stream reads, $all reads and catch-up subscriptions (count_option subscription).
func (s *Server) Read(req *streamspb.ReadReq, stream streamspb.Streams_ReadServer) error {
	options := req.GetOptions()
	if options == nil {
		return status.Error(codes.InvalidArgument, "read: missing options")
	}
	filter, err := newFilter(options.GetFilter())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	encode := eventEncoder(options)
	if options.GetSubscription() != nil {
		return s.subscribe(options, filter, encode, stream)
	}
	count := options.GetCount()
	backwards := options.GetReadDirection() == streamspb.ReadReq_Options_Backwards

	var records []*record
	switch {
	case options.GetStream() != nil:
		name := string(options.GetStream().GetStreamIdentifier().GetStreamName())
		var found bool
		records, found = s.readStream(name, options.GetStream(), backwards, count)
		if !found {
			// KurrentDB answers a read of a missing stream with a message, not a gRPC error.
			return stream.Send(&streamspb.ReadResp{Content: &streamspb.ReadResp_StreamNotFound_{
				StreamNotFound: &streamspb.ReadResp_StreamNotFound{StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(name)}},
			}})
		}
	case options.GetAll() != nil:
		records = s.readAll(options.GetAll(), backwards, count, filter)
	default:
		return status.Error(codes.InvalidArgument, "read: missing stream option")
	}
	for _, rec := range records {
		if err := stream.Send(encode(rec)); err != nil {
			return err
		}
	}
	return nil
}

// readStream selects up to count events of one stream. found is false when the stream has no
// events.
func (s *Server) readStream(name string, options *streamspb.ReadReq_Options_StreamOptions, backwards bool, count uint64) ([]*record, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	current := s.streams[name]
	if len(current) == 0 {
		return nil, false
	}
	size := uint64(len(current))
	var out []*record
	if backwards {
		from := size - 1
		if revision, ok := options.GetRevisionOption().(*streamspb.ReadReq_Options_StreamOptions_Revision); ok && revision.Revision < size {
			from = revision.Revision
		} else if options.GetStart() != nil {
			from = 0
		}
		for i := int64(from); i >= 0 && uint64(len(out)) < count; i-- {
			out = append(out, current[i])
		}
		return out, true
	}
	var from uint64
	switch option := options.GetRevisionOption().(type) {
	case *streamspb.ReadReq_Options_StreamOptions_Revision:
		from = option.Revision
	case *streamspb.ReadReq_Options_StreamOptions_End:
		from = size
	}
	for i := from; i < size && uint64(len(out)) < count; i++ {
		out = append(out, current[i])
	}
	return out, true
}

// readAll selects up to count events of the global order matching filter. A position is
// inclusive going forwards and exclusive going backwards, as in KurrentDB.
func (s *Server) readAll(options *streamspb.ReadReq_Options_AllOptions, backwards bool, count uint64, filter *filter) []*record {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*record
	if backwards {
		from := len(s.log) // exclusive
		switch option := options.GetAllOption().(type) {
		case *streamspb.ReadReq_Options_AllOptions_Position:
			from = s.firstAtOrAfter(option.Position.GetCommitPosition())
		case *streamspb.ReadReq_Options_AllOptions_Start:
			from = 0
		}
		for i := from - 1; i >= 0 && uint64(len(out)) < count; i-- {
			if filter.matches(s.log[i]) {
				out = append(out, s.log[i])
			}
		}
		return out
	}
	from := 0
	switch option := options.GetAllOption().(type) {
	case *streamspb.ReadReq_Options_AllOptions_Position:
		from = s.firstAtOrAfter(option.Position.GetCommitPosition())
	case *streamspb.ReadReq_Options_AllOptions_End:
		from = len(s.log)
	}
	for i := from; i < len(s.log) && uint64(len(out)) < count; i++ {
		if filter.matches(s.log[i]) {
			out = append(out, s.log[i])
		}
	}
	return out
}

// firstAtOrAfter is the index in the log of the first event at or after position. s.mu held.
func (s *Server) firstAtOrAfter(position uint64) int {
	return sort.Search(len(s.log), func(i int) bool { return s.log[i].position >= position })
}

// eventEncoder turns a record into a read response in the UUID form the request asked for.
func eventEncoder(options *streamspb.ReadReq_Options) func(*record) *streamspb.ReadResp {
	asString := options.GetUuidOption().GetString_() != nil
	return func(rec *record) *streamspb.ReadResp {
		id := structuredUUID(rec.id)
		if asString {
			id = &shared.UUID{Value: &shared.UUID_String_{String_: rec.id.String()}}
		}
		return &streamspb.ReadResp{Content: &streamspb.ReadResp_Event{Event: &streamspb.ReadResp_ReadEvent{
			Event: &streamspb.ReadResp_ReadEvent_RecordedEvent{
				Id:               id,
				StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(rec.stream)},
				StreamRevision:   rec.revision,
				PreparePosition:  rec.position,
				CommitPosition:   rec.position,
				Metadata: map[string]string{
					"type":         rec.eventType,
					"content-type": rec.contentType,
					// .NET ticks (100 ns) since the Unix epoch, as the client decodes them.
					"created": strconv.FormatInt(rec.created.UnixNano()/100, 10),
				},
				CustomMetadata: rec.customMetadata,
				Data:           rec.data,
			},
			Position: &streamspb.ReadResp_ReadEvent_CommitPosition{CommitPosition: rec.position},
		}}}
	}
}

// filter is a server-side $all filter on stream name or event type, by prefixes or a regex.
type filter struct {
	onEventType bool
	prefixes    []string
	regex       *regexp.Regexp
	// checkpointEvery is how many scanned events separate two checkpoints of a subscription.
	checkpointEvery int
}

func newFilter(options *streamspb.ReadReq_Options_FilterOptions) (*filter, error) {
	if options == nil {
		return nil, nil
	}
	var expression *streamspb.ReadReq_Options_FilterOptions_Expression
	f := &filter{}
	switch option := options.GetFilter().(type) {
	case *streamspb.ReadReq_Options_FilterOptions_StreamIdentifier:
		expression = option.StreamIdentifier
	case *streamspb.ReadReq_Options_FilterOptions_EventType:
		expression = option.EventType
		f.onEventType = true
	default:
		return nil, fmt.Errorf("read: filter without a stream or event-type expression")
	}
	f.prefixes = expression.GetPrefix()
	if expression.GetRegex() != "" {
		regex, err := regexp.Compile(expression.GetRegex())
		if err != nil {
			return nil, fmt.Errorf("read: filter regex: %w", err)
		}
		f.regex = regex
	}
	window := 32 // the client's default MaxSearchWindow
	if options.GetMax() > 0 {
		window = int(options.GetMax())
	}
	multiplier := max(int(options.GetCheckpointIntervalMultiplier()), 1)
	f.checkpointEvery = window * multiplier
	return f, nil
}

// matches reports whether rec passes the filter; a nil filter passes everything.
func (f *filter) matches(rec *record) bool {
	if f == nil {
		return true
	}
	subject := rec.stream
	if f.onEventType {
		subject = rec.eventType
	}
	if f.regex != nil && f.regex.MatchString(subject) {
		return true
	}
	for _, prefix := range f.prefixes {
		if strings.HasPrefix(subject, prefix) {
			return true
		}
	}
	return false
}

// subscribe runs a catch-up subscription: confirmation, stored events after the start, then live
// events as they commit, until the client goes away or DropSubscriptions.
func (s *Server) subscribe(options *streamspb.ReadReq_Options, filter *filter, encode func(*record) *streamspb.ReadResp, stream streamspb.Streams_ReadServer) error {
	ctx := stream.Context()
	sub := s.register()
	defer s.unregister(sub)

	// The next index to deliver, in the log ($all) or in the stream (by revision).
	var next int
	var streamName string
	toAll := options.GetAll() != nil
	s.mu.Lock()
	switch {
	case toAll:
		switch option := options.GetAll().GetAllOption().(type) {
		case *streamspb.ReadReq_Options_AllOptions_Position:
			// The start position is exclusive.
			next = sort.Search(len(s.log), func(i int) bool { return s.log[i].position > option.Position.GetCommitPosition() })
		case *streamspb.ReadReq_Options_AllOptions_Start:
			next = 0
		case *streamspb.ReadReq_Options_AllOptions_End:
			next = len(s.log)
		default:
			s.mu.Unlock()
			return status.Error(codes.InvalidArgument, "subscribe: missing $all start")
		}
	case options.GetStream() != nil:
		streamName = string(options.GetStream().GetStreamIdentifier().GetStreamName())
		switch option := options.GetStream().GetRevisionOption().(type) {
		case *streamspb.ReadReq_Options_StreamOptions_Revision:
			next = int(option.Revision) + 1 // exclusive
		case *streamspb.ReadReq_Options_StreamOptions_Start:
			next = 0
		default:
			next = len(s.streams[streamName])
		}
	default:
		s.mu.Unlock()
		return status.Error(codes.InvalidArgument, "subscribe: missing stream option")
	}
	s.mu.Unlock()

	if err := stream.Send(&streamspb.ReadResp{Content: &streamspb.ReadResp_Confirmation{
		Confirmation: &streamspb.ReadResp_SubscriptionConfirmation{SubscriptionId: uuid.NewString()},
	}}); err != nil {
		return err
	}

	scanned := 0
	for {
		s.mu.Lock()
		source := s.log
		if !toAll {
			source = s.streams[streamName]
		}
		end := min(next+readBatch, len(source))
		var batch []*record
		if next < end {
			batch = source[next:end]
		}
		wake := s.appended
		s.mu.Unlock()

		if len(batch) == 0 {
			// Caught up: wait for the next commit. Events are read from the log by index, so
			// turning live leaves no gap.
			if err := waitLive(ctx, sub, wake); err != nil {
				return err
			}
			continue
		}
		for _, rec := range batch {
			if sub.isDropped() {
				return errDropped
			}
			if filter.matches(rec) {
				if err := stream.Send(encode(rec)); err != nil {
					return err
				}
			}
			scanned++
			if filter != nil && scanned >= filter.checkpointEvery {
				scanned = 0
				if err := stream.Send(&streamspb.ReadResp{Content: &streamspb.ReadResp_Checkpoint_{Checkpoint: &streamspb.ReadResp_Checkpoint{
					CommitPosition:  rec.position,
					PreparePosition: rec.position,
				}}}); err != nil {
					return err
				}
			}
		}
		next += len(batch)
	}
}
