package launch

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// eachField calls fn with each length-delimited or varint field of the
// serialized protobuf message b, in order: typ is the field's wire type,
// v a length-delimited field's bytes, x a varint's value; fields of other
// wire types are skipped. `start` reads the few fields it needs this way
// (join's ttrpc exchange, the bootstrap check of its stdin): it is a
// short-lived process, and the protobuf runtime's first unmarshalling of
// a message type builds its codec by reflection.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if !num.IsValid() { // ConsumeTag passes numbers above the maximum; proto.Unmarshal does not
			return fmt.Errorf("field number %d out of range", num)
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			fn(num, typ, v, 0)
			b = b[n:]
		case protowire.VarintType:
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			fn(num, typ, nil, x)
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return nil
}
