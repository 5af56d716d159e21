package proxy

import (
	"testing"
	"unsafe"
)

// TestSessionSize keeps a session, the relay's with the proxy's fields
// around it, within the 1024-byte allocation size class: it is most of
// what an idle session holds, and the heap grows to twice what is live, so
// every byte over counts about twice in resident memory per idle session.
// The next class is 1152 bytes.
func TestSessionSize(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 1024 {
		t.Fatalf("a session is %d bytes, over the 1024-byte size class: move what few sessions use behind a pointer", n)
	}
}
