package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/wsproxy/wsproxy/config"
)

// TestConsoleColours: the console format writes plain text to a file, a
// pipe or a buffer, and colours levels on a terminal.
func TestConsoleColours(t *testing.T) {
	const esc = "\x1b["
	logTo := func(t *testing.T, w interface{ Write([]byte) (int, error) }) {
		t.Helper()
		log := newLogger(config.Log{Format: "console"}, zap.NewAtomicLevelAt(zap.InfoLevel), w)
		log.Warn("something to see", zap.String("key", "listeners[0].address"))
		_ = log.Sync()
	}
	t.Run("file", func(t *testing.T) {
		f, err := os.Create(filepath.Join(t.TempDir(), "wsproxy.log"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		logTo(t, f)
		out, _ := os.ReadFile(f.Name())
		if !strings.Contains(string(out), "WARN") || strings.Contains(string(out), esc) {
			t.Fatalf("log file: %q, want WARN and no escape codes", out)
		}
	})
	t.Run("pipe", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		logTo(t, w)
		w.Close()
		var out bytes.Buffer
		out.ReadFrom(r)
		if !strings.Contains(out.String(), "WARN") || strings.Contains(out.String(), esc) {
			t.Fatalf("pipe: %q, want WARN and no escape codes", out.String())
		}
	})
	t.Run("buffer", func(t *testing.T) {
		var out bytes.Buffer
		logTo(t, &out)
		if strings.Contains(out.String(), esc) {
			t.Fatalf("buffer: %q", out.String())
		}
	})
	t.Run("terminal", func(t *testing.T) {
		ptmx, tty := openPTY(t)
		defer ptmx.Close()
		defer tty.Close()
		logTo(t, tty)
		buf := make([]byte, 4096)
		n, err := ptmx.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(buf[:n]), esc) {
			t.Fatalf("terminal: %q, want coloured levels", buf[:n])
		}
	})
}

// openPTY opens a pseudo-terminal pair: what is written to tty can be read
// from ptmx. It skips the test where the system has none.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open the pty: %v", err)
	}
	return m, s
}
