package httpapi

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"

	"github.com/tallyledger/tally/domain/ledger"
)

// DecodeStrictJSON reads one JSON value from r into into, a pointer, and refuses what
// encoding/json lets through: a key given twice in one object (which would otherwise keep the
// last), a key that differs only in case from a field (encoding/json matches keys without
// regard to case, so "productlock" would set productLock), a field the type does not have, and
// anything after the value. Refusals wrap ledger.ErrInvalid and name the field; a body over
// the limit of an http.MaxBytesReader comes back as its *http.MaxBytesError.
func DecodeStrictJSON(r io.Reader, into any) error {
	body, err := io.ReadAll(r)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return fmt.Errorf("%w: request body: %v", ledger.ErrInvalid, err)
	}
	t := reflect.TypeOf(into)
	if t == nil || t.Kind() != reflect.Pointer {
		return fmt.Errorf("DecodeStrictJSON: into is a %T, not a pointer", into)
	}
	// The scan runs first: its messages are the precise ones, and it sees duplicates, which
	// Decode never reports.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := scanValue(dec, t.Elem(), ""); err != nil {
		return fmt.Errorf("%w: request body: %v", ledger.ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: request body: trailing data after the JSON value", ledger.ErrInvalid)
	}
	dec = json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return fmt.Errorf("%w: request body: %v", ledger.ErrInvalid, err)
	}
	return nil
}

// scanValue reads one value from dec's tokens and checks every object in it against t, the Go
// type it will be decoded into (nil or an interface: any keys, but no duplicates). path names
// the value in messages ("" for the whole body).
func scanValue(dec *json.Decoder, t reflect.Type, path string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && decodesItself(t) {
		t = nil // its own UnmarshalJSON decides what it accepts; duplicates are still refused
	}
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("not valid JSON: %v", err)
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil // a scalar: its type is Decode's to check
	}
	switch delim {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := scanValue(dec, elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case '{':
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch t.Kind() {
			case reflect.Struct:
				fields = jsonFields(t)
			case reflect.Map:
				elem = t.Elem()
			}
		}
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return fmt.Errorf("not valid JSON: %v", err)
			}
			key, _ := tok.(string)
			name := joinPath(path, key)
			if seen[key] {
				return fmt.Errorf("field %q is given twice", name)
			}
			seen[key] = true
			next := elem
			if fields != nil {
				ft, known := fields[key]
				if !known {
					for field := range fields {
						if strings.EqualFold(field, key) {
							return fmt.Errorf("field %q: names are case-sensitive, the field is %q", name, joinPath(path, field))
						}
					}
					return fmt.Errorf("unknown field %q", name)
				}
				next = ft
			}
			if err := scanValue(dec, next, name); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing ] or }
		return fmt.Errorf("not valid JSON: %v", err)
	}
	return nil
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonFields maps the JSON names of a struct's fields, as encoding/json names them (the tag's
// name, else the Go name; "-" skipped; embedded structs' fields promoted), to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					if _, shadowed := out[k]; !shadowed {
						out[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decodesItself reports whether encoding/json hands values of t to t's own method.
func decodesItself(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return t.Implements(jsonUnmarshaler) || p.Implements(jsonUnmarshaler) ||
		t.Implements(textUnmarshaler) || p.Implements(textUnmarshaler)
}
