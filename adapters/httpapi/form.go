package httpapi

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
)

// maxFormParams is the number of parameters from which net/url refuses a query or form (its
// default urlmaxqueryparams); the form reader refuses the same.
const maxFormParams = 10000

// smallComponent is the size up to which a name or value is collected in a scratch buffer; a
// longer one (an upload's Data) is written into a string builder sized once for the rest of the
// body, so that its bytes are held once, not copied from a buffer into a string.
const smallComponent = 64 << 10

// isForm reports whether the request's body is a URL-encoded form, as net/http decides it.
func isForm(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/x-www-form-urlencoded"
}

// readForm parses a URL-encoded body as url.ParseQuery parses it (the same values, and an error
// whenever ParseQuery gives one). declared is the body's announced length (-1: unknown). A body
// of up to smallComponent bytes is read whole and handed to ParseQuery, as net/http does; a
// longer one is parsed while it is read (streamForm). A read error is returned as it is, with no
// values, as net/http's ParseForm does.
func readForm(body io.Reader, declared int64) (url.Values, error) {
	if declared < 0 || declared > smallComponent {
		return streamForm(body, declared)
	}
	buf := make([]byte, declared+1) // the +1 reads the end of the body
	n, err := io.ReadFull(body, buf)
	switch {
	case err == nil:
		// More than announced: net/http stops a body at its Content-Length, but keep the
		// general case right.
		return streamForm(io.MultiReader(bytes.NewReader(buf), body), -1)
	case err != io.ErrUnexpectedEOF && err != io.EOF:
		return url.Values{}, err
	}
	return url.ParseQuery(string(buf[:n]))
}

// streamForm parses a URL-encoded body while reading it, without holding the raw body: the
// memory it takes is about the size of the values, once. A read error is returned as it is,
// with no values.
func streamForm(body io.Reader, declared int64) (url.Values, error) {
	f := formParser{values: url.Values{}, remaining: declared}
	size := int64(32 << 10)
	if declared >= 0 && declared < size {
		size = declared + 1 // the +1 reads the end of the body
	}
	buf := make([]byte, size)
	for {
		n, err := body.Read(buf)
		f.feed(buf[:n])
		if f.remaining >= 0 {
			f.remaining = max(0, f.remaining-int64(n))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return url.Values{}, err
		}
	}
	f.endPair()
	if f.amps+1 > maxFormParams {
		return url.Values{}, errors.New("number of URL query parameters exceeded limit")
	}
	return f.values, f.err
}

// formParser is the state of readForm between reads.
type formParser struct {
	values    url.Values
	err       error
	remaining int64 // bytes of the body not yet fed (-1: unknown)
	amps      int   // '&' read: ParseQuery counts amps + 1 parameters

	started bool // the current pair has at least one byte
	inValue bool // past the pair's first '='
	bad     bool // the pair is skipped (a semicolon or a bad escape)
	key     component
	value   component
	// escape holds the part of a %XX sequence read so far ('%' and up to one digit).
	escape []byte
}

// component collects one unescaped name or value.
type component struct {
	small []byte
	big   *strings.Builder
}

// write appends unescaped bytes; rest is how many bytes of the body follow them (-1: unknown).
func (c *component) write(b []byte, rest int64) {
	if c.big != nil {
		c.big.Write(b)
		return
	}
	if len(c.small)+len(b) <= smallComponent {
		c.small = append(c.small, b...)
		return
	}
	c.big = &strings.Builder{}
	if rest >= 0 {
		// Unescaping only shrinks: the rest of the body bounds what is still to come.
		c.big.Grow(len(c.small) + len(b) + int(rest))
	}
	c.big.Write(c.small)
	c.big.Write(b)
	c.small = c.small[:0]
}

func (c *component) String() string {
	if c.big != nil {
		return c.big.String()
	}
	return string(c.small)
}

func (c *component) reset() {
	c.small, c.big = c.small[:0], nil
}

func (f *formParser) fail(err error) {
	if f.err == nil {
		f.err = err
	}
}

// special reports the bytes that are not copied as they are.
func special(b byte) bool {
	return b == '&' || b == ';' || b == '=' || b == '%' || b == '+'
}

func (f *formParser) feed(p []byte) {
	for i := 0; i < len(p); {
		b := p[i]
		if b == '&' {
			f.amps++
			f.endPair()
			i++
			continue
		}
		f.started = true
		if f.bad {
			i++
			continue
		}
		if len(f.escape) == 0 && !special(b) {
			// A run of plain bytes is copied at once.
			j := i + 1
			for j < len(p) && !special(p[j]) {
				j++
			}
			f.put(p[i:j], f.rest(j))
			i = j
			continue
		}
		i++
		if len(f.escape) > 0 {
			f.escape = append(f.escape, b)
			if !ishex(b) {
				f.badEscape()
				continue
			}
			if len(f.escape) == 3 {
				f.put([]byte{unhex(f.escape[1])<<4 | unhex(f.escape[2])}, f.rest(i))
				f.escape = f.escape[:0]
			}
			continue
		}
		switch b {
		case ';':
			// ParseQuery refuses the whole pair, wherever the semicolon is.
			f.fail(errors.New("invalid semicolon separator in query"))
			f.bad = true
		case '=':
			if f.inValue {
				f.put(p[i-1:i], f.rest(i))
			}
			f.inValue = true
		case '%':
			f.escape = append(f.escape, b)
		case '+':
			f.put([]byte{' '}, f.rest(i))
		}
	}
}

// rest is how many bytes of the body follow the first next bytes of the chunk being fed (-1: unknown).
func (f *formParser) rest(next int) int64 {
	if f.remaining < 0 {
		return -1
	}
	return max(0, f.remaining-int64(next))
}

func (f *formParser) put(b []byte, rest int64) {
	if f.inValue {
		f.value.write(b, rest)
	} else {
		f.key.write(b, rest)
	}
}

func (f *formParser) badEscape() {
	f.fail(url.EscapeError(string(f.escape)))
	f.bad = true
}

// endPair stores the pair just read, unless it was empty or bad.
func (f *formParser) endPair() {
	if f.started && !f.bad && len(f.escape) > 0 {
		// A '%' without its two digits at the end of the pair.
		f.badEscape()
	}
	if f.started && !f.bad {
		k := f.key.String()
		f.values[k] = append(f.values[k], f.value.String())
	}
	f.started, f.inValue, f.bad = false, false, false
	f.escape = f.escape[:0]
	f.key.reset()
	f.value.reset()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
