package httpapi

import (
	"maps"
	"math"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/tallyledger/tally/domain"
)

// FuzzReadParams feeds arbitrary query strings and form bodies to the parameter reader and the
// typed parsers: nothing panics, every name comes out lower-cased, a name in the body wins over
// the query (and of several spellings, the first in byte order), and integers and booleans are read exactly as documented.
func FuzzReadParams(f *testing.F) {
	f.Add("ProductId=3&Key=ABCDE", "token=t&productid=4&IntValue=-5&EnableBound=True", true)
	f.Add("a=1&A=2&a=3", "", false)
	f.Add("%zz=1", "b=%", true)
	f.Add("IntValue=2147483648&Bound=-9223372036854775808&ShowAll=TRUE", "IntValue= 7 ", true)
	f.Add("", "Data=AB+CD%2B==&data=x", true)
	f.Fuzz(func(t *testing.T, query, body string, post bool) {
		s := &server{maxBody: 1 << 16}
		method := http.MethodGet
		if post {
			method = http.MethodPost
		}
		req := httptest.NewRequest(method, "/api/data/x", strings.NewReader(body))
		req.URL.RawQuery = query
		if post {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		values, malformed, err := s.readParams(httptest.NewRecorder(), req)
		if err != nil {
			if err != domain.ErrRequestTooLarge {
				t.Fatalf("readParams failed with %v", err)
			}
			return
		}
		if malformed {
			return // the handler refuses it after the token and owner checks (TestErrorRows)
		}
		q, qerr := url.ParseQuery(query)
		var b url.Values
		if post {
			b, _ = url.ParseQuery(body)
		}
		bodyByName, queryByName := byLowerName(b), byLowerName(q)
		if want := firstSpellings(b, q); !maps.Equal(values, want) {
			t.Fatalf("read %q, want %q (the body before the query, spellings in byte order)", values, want)
		}
		for name, v := range values {
			if name != strings.ToLower(name) {
				t.Fatalf("name %q not lower-cased", name)
			}
			// The value comes from some spelling of the name, in the body if it has one.
			inBody, inQuery := bodyByName[name], queryByName[name]
			if len(inBody) > 0 {
				if !contains(inBody, v) {
					t.Fatalf("%s=%q is not one of the body's %q", name, v, inBody)
				}
			} else if qerr == nil && !contains(inQuery, v) {
				t.Fatalf("%s=%q is not one of the query's %q", name, v, inQuery)
			}
			// Integers: accepted exactly when the trimmed text is a decimal integer within
			// range, by an independent reading (math/big); missing or blank is 0.
			p := &parser{values: values}
			n := p.int64(name)
			trimmed := strings.TrimSpace(v)
			want, isInt := new(big.Int).SetString(trimmed, 10)
			switch {
			case trimmed == "":
				if n != 0 || p.err != nil {
					t.Fatalf("blank %q read as %d, %v", v, n, p.err)
				}
			case isInt && want.IsInt64() && !strings.HasPrefix(trimmed, "0x"):
				if p.err != nil || n != want.Int64() {
					t.Fatalf("%q read as %d, %v; want %v", v, n, p.err, want)
				}
			default:
				if p.err == nil {
					t.Fatalf("%q accepted as the integer %d", v, n)
				}
			}
			p32 := &parser{values: values}
			i := p32.int32(name)
			if fits := p.err == nil && n >= math.MinInt32 && n <= math.MaxInt32; fits != (p32.err == nil) || fits && int64(i) != n {
				t.Fatalf("%q read as int32 %d, %v; as int64 %d, %v", v, i, p32.err, n, p.err)
			}
			p = &parser{values: values}
			got := p.bool(name)
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "", "false", "0":
				if got || p.err != nil {
					t.Fatalf("%q is false", v)
				}
			case "true", "1":
				if !got || p.err != nil {
					t.Fatalf("%q is true", v)
				}
			default:
				if p.err == nil {
					t.Fatalf("%q accepted as a boolean", v)
				}
			}
		}
	})
}

// firstSpellings is the documented choice, made the plain way: each source in turn, the body
// first, and within one its spellings in byte order; the first value seen of a name wins.
func firstSpellings(sources ...url.Values) map[string]string {
	out := map[string]string{}
	for _, vs := range sources {
		for _, name := range slices.Sorted(maps.Keys(vs)) {
			if lower := strings.ToLower(name); len(vs[name]) > 0 {
				if _, seen := out[lower]; !seen {
					out[lower] = vs[name][0]
				}
			}
		}
	}
	return out
}

// byLowerName groups the values of every spelling of each name under its lower-case form.
func byLowerName(vs url.Values) map[string][]string {
	out := map[string][]string{}
	for name, v := range vs {
		lower := strings.ToLower(name)
		out[lower] = append(out[lower], v...)
	}
	return out
}

func contains(vs []string, v string) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}
