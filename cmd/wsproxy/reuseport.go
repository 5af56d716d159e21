package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/config"
)

// A listener with reuse_port sets SO_REUSEPORT before it binds, so that
// several wsproxy processes on one host (each with its own descriptor
// budget and event loops) listen on the same address and the kernel
// spreads new connections over them by a hash of the connection's
// addresses. The kernel lets a socket join a port only when every socket
// already bound there set SO_REUSEPORT too, and all belong to one user.
// After a binary upgrade the new process takes the old one's socket as it
// is: its SO_REUSEPORT stays what the old process set.

// clientListenConfig is how a client listener's socket is made.
func clientListenConfig(l config.Listener) *net.ListenConfig {
	// No TCP keep-alive on client connections: WebSocket sessions have
	// the proxy's pings and read timeout, plain HTTP its idle timeout,
	// and keep-alive costs four setsockopt calls per connection.
	lc := &net.ListenConfig{KeepAlive: -1}
	if l.ReusePort {
		lc.Control = setReusePort
	}
	return lc
}

// setReusePort is a net.ListenConfig Control function: it runs on the
// new socket before bind.
func setReusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("reuse_port: %w", serr)
	}
	return nil
}

// listenError explains a listener that could not bind because the
// address is taken: SO_REUSEPORT shares a port only between sockets that
// all set it.
func listenError(i int, l config.Listener, err error) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	if l.ReusePort {
		return fmt.Errorf("%w (listeners[%d] has reuse_port, so the socket there is another user's, or was opened without reuse_port)", err, i)
	}
	return fmt.Errorf("%w (for several processes to share the port, set reuse_port: true on listeners[%d] in every one of them)", err, i)
}

// reusePortOf reports whether ln's socket has SO_REUSEPORT; ok is false
// when that cannot be read.
func reusePortOf(ln net.Listener) (on, ok bool) {
	sc, isSC := ln.(syscall.Conn)
	if !isSC {
		return false, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, false
	}
	var v int
	var gerr error
	if rc.Control(func(fd uintptr) {
		v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT)
	}) != nil || gerr != nil {
		return false, false
	}
	return v != 0, true
}
