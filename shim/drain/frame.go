package drain

import "encoding/binary"

// The ttrpc wire format (github.com/containerd/ttrpc, channel.go): every
// message is a 10-byte header followed by Length bytes of payload.
//
//	bytes 0-3  Length   uint32, big endian (payload only)
//	bytes 4-7  StreamID uint32, big endian (odd: opened by the client)
//	byte  8    Type     1 request, 2 response, 3 data
//	byte  9    Flags    1 remote closed, 2 remote open, 4 no data
const (
	headerLen = 10

	typeRequest  = 1
	typeResponse = 2
	typeData     = 3

	flagRemoteClosed = 1
)

// header is a decoded frame header.
type header struct {
	length uint32
	stream uint32
	typ    uint8
	flags  uint8
}

func parseHeader(b []byte) header {
	return header{
		length: binary.BigEndian.Uint32(b[0:4]),
		stream: binary.BigEndian.Uint32(b[4:8]),
		typ:    b[8],
		flags:  b[9],
	}
}

// closesStream reports whether a frame the server writes ends its stream:
// a response (unary calls, and every error), or a data frame with the
// remote-closed flag (the end of a server stream that succeeded).
func (h header) closesStream() bool {
	return h.typ == typeResponse || (h.typ == typeData && h.flags&flagRemoteClosed != 0)
}

// frameWriter follows the frames of a byte stream written in arbitrary
// pieces (ttrpc writes through a bufio.Writer, which may split a header
// from its payload or a payload in several writes) and calls done with the
// header of each frame once its last byte went through.
type frameWriter struct {
	hdr       [headerLen]byte
	hdrN      int    // bytes of hdr filled
	remaining uint32 // payload bytes still to come of the current frame
	cur       header
}

// feed consumes p, which was written to the socket.
func (w *frameWriter) feed(p []byte, done func(header)) {
	for len(p) > 0 {
		if w.hdrN < headerLen {
			n := copy(w.hdr[w.hdrN:], p)
			w.hdrN += n
			p = p[n:]
			if w.hdrN < headerLen {
				return
			}
			w.cur = parseHeader(w.hdr[:])
			w.remaining = w.cur.length
		} else {
			n := uint32(len(p))
			if n > w.remaining {
				n = w.remaining
			}
			w.remaining -= n
			p = p[n:]
		}
		if w.remaining == 0 {
			w.hdrN = 0
			done(w.cur)
		}
	}
}
