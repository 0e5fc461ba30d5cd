package httpapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkReadParams reads the parameters of an increment as an SDK posts it: the cost the
// body handling adds to every direct call.
func BenchmarkReadParams(b *testing.B) {
	s := &server{maxBody: DefaultMaxBodyBytes}
	body := "token=0123456789abcdef0123456789abcdef&ProductId=3&Key=ABCDE-FGHIJ-KLMNO-PQRST&Name=usage&IntValue=1"
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/api/data/incrementintvaluetokey", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		values, malformed, err := s.readParams(httptest.NewRecorder(), req)
		if err != nil || malformed || len(values) != 5 {
			b.Fatal(values, malformed, err)
		}
	}
}
