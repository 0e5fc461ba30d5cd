package openapitest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func BenchmarkCheck(b *testing.B) {
	v, err := Shared()
	if err != nil {
		b.Fatal(err)
	}
	h := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "X-Request-Id": {"r-1"}}
	for b.Loop() {
		req := httptest.NewRequest("POST", "/api/data/IncrementIntValueToKey", nil)
		resp := &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader(`{"result":0,"message":null}`))}
		if err := v.Check(req, resp); err != nil {
			b.Fatal(err)
		}
	}
}
