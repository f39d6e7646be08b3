package manifest

import "errors"

// The types below stand in, while a manifest is decoded, for fields whose
// values Berth does not keep. Each accepts exactly the JSON values that
// encoding/json accepts for the type it replaces, and refuses the rest,
// but stores nothing. encoding/json has checked that the whole body is
// valid JSON before it calls any UnmarshalJSON, and passes each one the
// bytes of one complete value, so they only need to look at its shape.
// encoding/json also calls them with null, which every Go type accepts.

var errShape = errors.New("value of the wrong JSON type")

// stringShape replaces a string: it accepts a string or null.
type stringShape struct{}

func (*stringShape) UnmarshalJSON(b []byte) error {
	if b[0] == '"' || b[0] == 'n' {
		return nil
	}
	return errShape
}

// stringMapShape replaces a map[string]string: null, or an object whose
// values are strings or null (null leaves "").
type stringMapShape struct{}

func (*stringMapShape) UnmarshalJSON(b []byte) error {
	if b[0] == 'n' {
		return nil
	}
	if b[0] != '{' {
		return errShape
	}
	// {"key": value, ...}: in valid JSON each key is a string followed by
	// ':'; each value must be a string or null.
	for i := skipSpace(b, 1); b[i] != '}'; {
		i = skipSpace(b, skipString(b, i)+1) // the ':'
		end, ok := stringOrNull(b, skipSpace(b, i+1))
		if !ok {
			return errShape
		}
		if i = skipSpace(b, end); b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return nil
}

// stringListShape replaces a []string: null, or an array of strings or
// nulls.
type stringListShape struct{}

func (*stringListShape) UnmarshalJSON(b []byte) error {
	if b[0] == 'n' {
		return nil
	}
	if b[0] != '[' {
		return errShape
	}
	for i := skipSpace(b, 1); b[i] != ']'; {
		end, ok := stringOrNull(b, i)
		if !ok {
			return errShape
		}
		if i = skipSpace(b, end); b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return nil
}

// stringOrNull reports whether the value at b[i] is a string or null, and
// where it ends.
func stringOrNull(b []byte, i int) (end int, ok bool) {
	switch b[i] {
	case '"':
		return skipString(b, i) + 1, true
	case 'n':
		return i + len("null"), true
	}
	return i, false
}

// platformShape replaces ocispec.Platform, whose fields it names the same
// way, so that encoding/json matches the same keys (it folds case) and
// checks their values by the types below. Its size is zero: a platform
// in a descriptor costs no allocation.
type platformShape struct {
	Architecture stringShape     `json:"architecture"`
	OS           stringShape     `json:"os"`
	OSVersion    stringShape     `json:"os.version"`
	OSFeatures   stringListShape `json:"os.features"`
	Variant      stringShape     `json:"variant"`
}

// nonNull replaces a json.RawMessage that only needs to say whether the
// field has a value other than null (the last one, if the key repeats).
type nonNull bool

func (n *nonNull) UnmarshalJSON(b []byte) error {
	*n = string(b) != "null"
	return nil
}

// skipString returns the index of the closing quote of the string that
// starts at b[i].
func skipString(b []byte, i int) int {
	for i++; b[i] != '"'; i++ {
		if b[i] == '\\' {
			i++
		}
	}
	return i
}

func skipSpace(b []byte, i int) int {
	for b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r' {
		i++
	}
	return i
}

// minDescriptorJSON is the fewest bytes a descriptor that passes
// checkDescriptor takes in a body: {"mediaType":"x","digest":"sha256:<64
// hex>"}. listHint never announces more descriptors than a body of its
// size can hold, so whatever a body says, the lists allocated up front
// stay within about its own size.
const minDescriptorJSON = len(`{"mediaType":"x","digest":"sha256:`) + 64 + len(`"}`)

// listHint counts the elements of the top-level "layers" and "manifests"
// arrays of body, so that they can be allocated once instead of grown
// element by element (encoding/json grows a slice of 27,000 descriptors
// through dozens of copies). It is only a hint: it does not validate the
// body, and a key it misreads (spelled with escapes, say) costs only the
// growth it was meant to save.
func listHint(body []byte) (layers, manifests int) {
	depth := 0
	var key []byte    // the last string read at depth 1
	var counting *int // layers or manifests, inside their array
	n := 0            // elements of that array so far
	for i := 0; i < len(body); i++ {
		switch c := body[i]; c {
		case '"':
			j := i + 1
			for j < len(body) && body[j] != '"' {
				if body[j] == '\\' {
					j++
				}
				j++
			}
			if depth == 1 {
				key = body[i+1 : min(j, len(body))]
			}
			i = j
		case '{', '[':
			depth++
			if depth == 2 && c == '[' {
				switch {
				case asciiEqualFold(key, "layers"):
					counting = &layers
				case asciiEqualFold(key, "manifests"):
					counting = &manifests
				}
				n = 0
				if j := skipSpaceSafe(body, i+1); j < len(body) && body[j] != ']' {
					n = 1
				}
			}
		case '}', ']':
			if depth == 2 && counting != nil {
				// A repeated key: room for the longest.
				*counting = max(*counting, n)
				counting = nil
			}
			depth--
		case ',':
			if depth == 2 {
				n++
			}
		}
	}
	most := len(body) / minDescriptorJSON
	return min(layers, most), min(manifests, most)
}

func skipSpaceSafe(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// asciiEqualFold reports whether key is name, ignoring ASCII case, as
// encoding/json matches keys to fields (its Unicode folds do not matter to
// a hint).
func asciiEqualFold(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}
