package poller

import "golang.org/x/sys/unix"

// The 64 bits of epoll user data are the Fd and Pad fields of
// unix.EpollEvent; the poller stores its token there.
func putToken(ev *unix.EpollEvent, t uint64) {
	ev.Fd = int32(uint32(t))
	ev.Pad = int32(uint32(t >> 32))
}

func getToken(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
