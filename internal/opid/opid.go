// Package opid makes and checks operation ids: the names under which a
// client reads an operation's outcome and the journal records it.
package opid

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// MaxLen is the longest id a client may choose.
const MaxLen = 64

// New returns a random id of 24 hex digits. Its first 8 characters name
// an operation's QEMU nodes, so they must differ between operations:
// they come from crypto/rand, never from a counter.
func New() string {
	b := make([]byte, 12)
	// crypto/rand.Read does not fail on Linux; if it ever did, an id
	// shared by two operations would be worse than a crash.
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// Check reports whether a client's id is well formed: 1 to 64 of
// [A-Za-z0-9._-], so that it fits a header, a URL path segment and a
// journal key as it is.
func Check(id string) error {
	if id == "" || len(id) > MaxLen {
		return fmt.Errorf("operation id must be 1 to %d of [A-Za-z0-9._-]", MaxLen)
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("operation id must be 1 to %d of [A-Za-z0-9._-]", MaxLen)
		}
	}
	return nil
}
