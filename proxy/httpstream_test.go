package proxy

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestReadTimeoutBoundsSilence checks that read_timeout bounds the silence
// between reads from the backend, not a whole response: a Server-Sent
// Events stream and a download that last several read_timeouts with bytes
// flowing go through whole; a long-poll silent past read_timeout gets 504
// and is not held against the backend.
func TestReadTimeoutBoundsSilence(t *testing.T) {
	const readTimeout = 400 * time.Millisecond
	release := make(chan struct{})
	defer close(release)
	b := startBackend(t, "b0", func(b *testBackend) {
		b.onHTTP = func(ctx *fasthttp.RequestCtx) {
			switch string(ctx.Path()) {
			case "/events":
				ctx.SetContentType("text/event-stream")
				ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
					for i := 0; i < 10; i++ {
						fmt.Fprintf(w, "data: event %d\n\n", i)
						w.Flush()
						time.Sleep(readTimeout / 4) // the stream's own pace
					}
				})
			case "/download":
				const chunk = 64 << 10
				ctx.SetBodyStream(&pacedReader{left: 10 * chunk, chunk: chunk, pause: readTimeout / 4}, 10*chunk)
			case "/longpoll":
				<-release
			}
		}
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, readTimeout, "4s"), b.addr())

	start := time.Now()
	resp, err := http.Get(hp.base() + "/events")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 10; i++ {
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: event %d\n", i) {
			t.Fatalf("event %d after %v: %q %v", i, time.Since(start), line, err)
		}
		br.ReadString('\n')
	}
	if _, err := io.ReadAll(br); err != nil {
		t.Fatalf("end of the event stream: %v", err)
	}
	resp.Body.Close()
	if d := time.Since(start); d < 2*readTimeout {
		t.Fatalf("the stream lasted %v, not past read_timeout: the test shows nothing", d)
	}

	start = time.Now()
	resp, err = http.Get(hp.base() + "/download")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 10*64<<10 {
		t.Fatalf("download: %d bytes, %v", n, err)
	}
	if d := time.Since(start); d < 2*readTimeout {
		t.Fatalf("the download lasted %v, not past read_timeout", d)
	}

	for i := 0; i < 3; i++ {
		code, body := get(t, hp.base()+"/longpoll")
		if code != 504 {
			t.Fatalf("silent long-poll: %d %q, want 504", code, body)
		}
	}
	if !hp.up(t, b.addr()) {
		t.Fatal("silent long-polls took the backend down")
	}
}

// pacedReader yields left bytes, chunk at a time, pausing between chunks.
type pacedReader struct {
	left, chunk int
	pause       time.Duration
	started     bool
}

func (r *pacedReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.started {
		time.Sleep(r.pause)
	}
	r.started = true
	n := min(len(p), r.chunk, r.left)
	clear(p[:n])
	r.left -= n
	return n, nil
}

// TestUploadsStream sends a 64 MiB upload with a Content-Length and a
// chunked one, in two parts: the client sends the second part only once
// the backend has received the first mebibyte, which a proxy that holds
// the body (whole, or more than a mebibyte of it) never lets happen. The
// backend must get every byte, in order.
func TestUploadsStream(t *testing.T) {
	firstMiB := make(chan struct{}, 1)
	rb := startRawBackend(t, func(c net.Conn, _, _ int, req *http.Request) bool {
		h := sha256.New()
		n, err := io.CopyN(h, req.Body, 1<<20)
		if err == nil {
			firstMiB <- struct{}{}
			var m int64
			m, err = io.Copy(h, req.Body)
			n += m
		}
		if err != nil {
			return false
		}
		body := fmt.Sprintf("%d %x", n, h.Sum(nil))
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		return true
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "5s", "4s"), rb.addr())
	for _, tc := range []struct {
		name    string
		size    int64
		chunked bool
	}{{"content-length", 64 << 20, false}, {"chunked", 64 << 20, true}} {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			want := sha256.New()
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				block := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
				for i := int64(0); i < tc.size/int64(len(block)); i++ {
					if i == 16 { // 1 MiB sent: the rest waits for the backend
						select {
						case <-firstMiB:
						case <-time.After(10 * time.Second):
							pw.CloseWithError(errors.New("the backend never got the first MiB: the proxy holds the upload"))
							return
						}
					}
					block[0] = byte(i)
					want.Write(block)
					if _, err := pw.Write(block); err != nil {
						return
					}
				}
				pw.Close()
			}()
			req, _ := http.NewRequest("POST", hp.base()+"/upload", pr)
			if !tc.chunked {
				req.ContentLength = tc.size
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			<-sent
			if wantBody := fmt.Sprintf("%d %x", tc.size, want.Sum(nil)); resp.StatusCode != 200 || string(body) != wantBody {
				t.Fatalf("upload: %d %q, want %q", resp.StatusCode, body, wantBody)
			}
		})
	}
}

// TestUploadWriteTimeout sends an upload to a backend that never reads
// it: once the socket buffers are full, a write that makes no progress for
// write_timeout fails the request with 504, which the backend's passive
// health does not count.
func TestUploadWriteTimeout(t *testing.T) {
	release := make(chan struct{})
	rb := startRawBackend(t, func(c net.Conn, _, _ int, req *http.Request) bool {
		<-release // reads the head, never the body
		return false
	})
	defer close(release)
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "30s", "4s"), rb.addr())
	for i := 0; i < 2; i++ { // two in a row would take it down if counted
		// A raw client reads the answer while it is still sending, as
		// the proxy answers before the upload ends.
		c, err := net.Dial("tcp", hp.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		const size = 64 << 20
		go func() {
			fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
			c.Write(make([]byte, size)) // fails once the proxy closes
		}()
		start := time.Now()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 504 {
			t.Fatalf("upload nobody reads: %d after %v, want 504", resp.StatusCode, time.Since(start))
		}
	}
	if !hp.up(t, rb.addr()) {
		t.Fatal("a backend slow to read uploads was taken down")
	}
}

// TestSlowUploadOutlastsHandshakeTimeout sends an upload that keeps moving
// for longer than handshake_timeout, which bounds reading the request
// head: read_timeout, the silence between reads, is what bounds the body.
func TestSlowUploadOutlastsHandshakeTimeout(t *testing.T) {
	rb := startRawBackend(t, func(c net.Conn, _, _ int, req *http.Request) bool {
		n, err := io.Copy(io.Discard, req.Body)
		if err != nil {
			return false
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d", len(strconv.FormatInt(n, 10)), n)
		return true
	})
	p := startProxy(t, `
listeners: [{address: "127.0.0.1:0"}]
log: {access_log: false}
defaults: {handshake_timeout: 300ms, read_timeout: 2s, ping_interval: 1s}
routes:
  - {path: /, pool: p}
pools:
  p: {backends: [{address: "{{B0}}"}]}
`, rb.addr())
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 8; i++ {
			if _, err := pw.Write(make([]byte, 100<<10)); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond) // the client's own pace
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://"+p.ln.Addr().String()+"/upload", pr)
	req.ContentLength = 8 * 100 << 10
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("slow upload cut after %v: %v", time.Since(start), err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != strconv.Itoa(8*100<<10) {
		t.Fatalf("slow upload: %d %q after %v", resp.StatusCode, body, time.Since(start))
	}
}

// TestEarlyAnswerToUpload has the backend refuse an upload before reading
// it (413, then close): the client gets the backend's answer, not 502, and
// the backend is not blamed.
func TestEarlyAnswerToUpload(t *testing.T) {
	rb := startRawBackend(t, func(c net.Conn, _, _ int, req *http.Request) bool {
		fmt.Fprintf(c, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
		return false // closed with the upload unread: a reset
	})
	hp := startHealthProxy(t, fmt.Sprintf(passiveConfig, "2s", "4s"), rb.addr())
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", hp.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		const size = 32 << 20
		go func() {
			fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
			c.Write(make([]byte, size)) // fails once the proxy closes
		}()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != 413 || string(body) != "too big!" {
			t.Fatalf("early refusal of an upload: %d %q, want 413 %q", resp.StatusCode, body, "too big!")
		}
	}
	if !hp.up(t, rb.addr()) {
		t.Fatal("a backend refusing uploads was taken down")
	}
}
