package httpapi

import (
	"io"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzReadForm checks the form reader, and its streaming parser on its own (which readForm uses
// for bodies over 64 KiB only), against url.ParseQuery, which net/http's ParseForm uses: for any
// body, read in one piece, byte by byte or in halves, and whether its announced length is
// right, unknown or short, the values are the same, and each fails exactly when ParseQuery does
// (with no values when ParseQuery refuses the whole form).
func FuzzReadForm(f *testing.F) {
	f.Add("token=t&ProductId=3&Data=AB%2BCD%3D%3D", uint8(0x80))
	f.Add("a=1&a=2&=x&&b", uint8(0x81))
	f.Add("a%3=1&b=%zz&c=%4", uint8(0x82))
	f.Add("a=1;b=2&c=3", uint8(0x83))
	f.Add("x=+%41+&y==&z=%", uint8(0x84))
	f.Add("x=+%41+&y==&z=%", uint8(4))
	f.Add(strings.Repeat("&", maxFormParams), uint8(5))
	f.Add("d="+strings.Repeat("A", smallComponent+3)+"%2B&t=x", uint8(0))
	f.Fuzz(func(t *testing.T, body string, mode uint8) {
		want, wantErr := url.ParseQuery(body)
		var r io.Reader = strings.NewReader(body)
		switch mode % 3 {
		case 1:
			r = iotest.OneByteReader(r)
		case 2:
			r = iotest.HalfReader(r)
		}
		declared := int64(len(body))
		switch mode & 0x7f / 3 % 3 {
		case 1:
			declared = -1
		case 2:
			declared /= 2 // a wrong announcement must not change the result
		}
		read := readForm
		if mode&0x80 != 0 {
			read = streamForm
		}
		got, err := read(r, declared)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("mode %d: reading %q: error %v, ParseQuery error %v", mode, body, err, wantErr)
		}
		if len(want) == 0 && len(got) == 0 {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("mode %d: reading %q: %q, ParseQuery %q", mode, body, got, want)
		}
	})
}
