package libvirtrpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	xdr "github.com/davecgh/go-xdr/xdr2"
)

// Programs, as libvirt numbers them.
const (
	// remoteProgram is REMOTE_PROGRAM, the libvirt API.
	remoteProgram uint32 = 0x20008086
	// remoteVersion is REMOTE_PROTOCOL_VERSION.
	remoteVersion uint32 = 1
	// keepaliveProgram is KEEPALIVE_PROGRAM ("keep").
	keepaliveProgram uint32 = 0x6b656570
	// keepaliveVersion is KEEPALIVE_PROTOCOL_VERSION.
	keepaliveVersion uint32 = 1
)

// Keepalive procedures.
const (
	keepalivePing int32 = 1
	keepalivePong int32 = 2
)

// Message types (virNetMessageType).
const (
	typeCall    uint32 = 0
	typeReply   uint32 = 1
	typeMessage uint32 = 2
	// typeCallWithFDs is a call whose descriptors follow on the socket.
	typeCallWithFDs uint32 = 3
)

// Reply statuses (virNetMessageStatus).
const (
	statusOK    uint32 = 0
	statusError uint32 = 1
)

// Sizes of virnetprotocol.x.
const (
	// lenSize is the length word, which counts itself.
	lenSize = 4
	// headerSize is the header's six words.
	headerSize = 24
	// maxMessage is VIR_NET_MESSAGE_MAX: libvirt's largest message
	// after the length word. A longer one ends the connection, as in
	// libvirtd.
	maxMessage = 32 << 20
	// firstChunk is what readFrame allocates before the body arrives.
	firstChunk = 64 << 10
	// maxString is VIR_NET_MESSAGE_STRING_MAX, libvirt's longest string.
	maxString = 4 << 20
)

// header is virNetMessageHeader.
type header struct {
	Program   uint32
	Version   uint32
	Procedure int32
	Type      uint32
	Serial    uint32
	Status    uint32
}

// errFrame is a frame that cannot be read: the stream is out of step
// and the connection must end, as libvirtd ends it.
var errFrame = errors.New("malformed libvirt RPC frame")

// readFrame reads one message: its header and its XDR body. The body
// is a fresh slice the caller owns.
func readFrame(r io.Reader) (header, []byte, error) {
	var lenBuf [lenSize]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return header{}, nil, err
	}
	n := binary.BigEndian.Uint32(lenBuf[:])
	switch {
	case n < lenSize+headerSize:
		return header{}, nil, fmt.Errorf("%w: length %d is shorter than a header", errFrame, n)
	case n > lenSize+maxMessage:
		return header{}, nil, fmt.Errorf("%w: length %d is over the maximum %d", errFrame, n, lenSize+maxMessage)
	}
	msg, err := readBody(r, int(n-lenSize))
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return header{}, nil, fmt.Errorf("%w: %d of %d bytes: %w", errFrame, len(msg)+lenSize, n, err)
	}
	h := header{
		Program:   binary.BigEndian.Uint32(msg[0:]),
		Version:   binary.BigEndian.Uint32(msg[4:]),
		Procedure: int32(binary.BigEndian.Uint32(msg[8:])),
		Type:      binary.BigEndian.Uint32(msg[12:]),
		Serial:    binary.BigEndian.Uint32(msg[16:]),
		Status:    binary.BigEndian.Uint32(msg[20:]),
	}
	return h, msg[headerSize:], nil
}

// readBody reads size bytes. It allocates as they arrive, doubling,
// not the size up front: a client that sends a length of 32 MiB and
// stalls costs the server firstChunk, not 32 MiB.
func readBody(r io.Reader, size int) ([]byte, error) {
	msg := make([]byte, 0, min(size, firstChunk))
	for len(msg) < size {
		if len(msg) == cap(msg) {
			msg = append(make([]byte, 0, min(2*cap(msg), size)), msg...)
		}
		n, err := r.Read(msg[len(msg):cap(msg)])
		msg = msg[:len(msg)+n]
		if err != nil && len(msg) < size {
			return msg, err
		}
	}
	return msg, nil
}

// appendFrame encodes a message: the length word, the header and the
// XDR encoding of body (none if body is nil).
func appendFrame(buf []byte, h header, body any) ([]byte, error) {
	start := len(buf)
	buf = binary.BigEndian.AppendUint32(buf, 0) // the length, set below
	buf = binary.BigEndian.AppendUint32(buf, h.Program)
	buf = binary.BigEndian.AppendUint32(buf, h.Version)
	buf = binary.BigEndian.AppendUint32(buf, uint32(h.Procedure))
	buf = binary.BigEndian.AppendUint32(buf, h.Type)
	buf = binary.BigEndian.AppendUint32(buf, h.Serial)
	buf = binary.BigEndian.AppendUint32(buf, h.Status)
	if body != nil {
		w := bytes.NewBuffer(buf)
		if _, err := xdr.Marshal(w, body); err != nil {
			return buf[:start], fmt.Errorf("encode the reply to procedure %d: %w", h.Procedure, err)
		}
		buf = w.Bytes()
	}
	n := len(buf) - start
	if n > lenSize+maxMessage {
		return buf[:start], fmt.Errorf("encode the reply to procedure %d: %d bytes, over libvirt's maximum %d", h.Procedure, n, lenSize+maxMessage)
	}
	binary.BigEndian.PutUint32(buf[start:], uint32(n))
	return buf, nil
}

// errTrailing is a body with bytes its type does not account for.
var errTrailing = errors.New("trailing bytes")

// decodeBody decodes an XDR body into v, which must use it whole. No
// element may claim more than the body holds, so garbage cannot make
// it allocate more than a few times the body's size.
func decodeBody(body []byte, v any) error {
	limit := uint(len(body))
	if limit > maxString {
		limit = maxString
	}
	r := bytes.NewReader(body)
	if _, err := xdr.UnmarshalLimited(r, v, limit); err != nil {
		return err
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d after the arguments", errTrailing, r.Len())
	}
	return nil
}
