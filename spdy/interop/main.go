// Interop harness: Go spdystream (v0.2.0) against corral-spdy.
// go run interop client ADDR  -> Go client against a Rust echo server
// go run interop server ADDR  -> Go echo server for a Rust client
package main

import (
	"bytes"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

func fail(f string, a ...interface{}) {
	fmt.Printf("FAIL: "+f+"\n", a...)
	os.Exit(1)
}

func pattern(n, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*7 + seed) % 251)
	}
	return b
}

func exchange(c *spdystream.Connection, kind string, n, seed int) {
	h := http.Header{}
	h.Set("streamType", kind)
	h.Set("port", "8080")
	st, err := c.CreateStream(h, nil, false)
	if err != nil {
		fail("create: %v", err)
	}
	if err := st.WaitTimeout(5 * time.Second); err != nil {
		fail("wait reply: %v", err)
	}
	data := pattern(n, seed)
	go func() {
		// Go writes each Write() as one DATA frame: write in 1 MiB pieces and one big one.
		if _, err := st.Write(data); err != nil {
			fail("write: %v", err)
		}
		st.Close()
	}()
	got, err := ioutil.ReadAll(st)
	if err != nil {
		fail("read %s: %v", kind, err)
	}
	want := append([]byte(kind+":"), data...)
	if !bytes.Equal(got, want) {
		fail("stream %s: got %d bytes, want %d", kind, len(got), len(want))
	}
}

func client(addr string) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		fail("dial: %v", err)
	}
	c, err := spdystream.NewConnection(conn, false)
	if err != nil {
		fail("conn: %v", err)
	}
	go c.Serve(spdystream.NoOpStreamHandler)
	exchange(c, "error", 0, 1)
	exchange(c, "stdout", 10, 2)
	exchange(c, "stdin", 4<<20, 3)
	if _, err := c.Ping(); err != nil {
		fail("ping: %v", err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); exchange(c, fmt.Sprintf("s%d", i), 100000+i, i) }(i)
	}
	wg.Wait()
	// A reset stream.
	h := http.Header{}
	h.Set("streamType", "reset")
	st, _ := c.CreateStream(h, nil, false)
	if err := st.WaitTimeout(5 * time.Second); err != nil {
		fail("wait reply: %v", err)
	}
	st.Reset()
	if _, err := c.Ping(); err != nil {
		fail("ping: %v", err)
	}
	c.Close()
	fmt.Println("go client: OK")
}

func server(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fail("listen: %v", err)
	}
	fmt.Println("listening")
	sc, err := ln.Accept()
	if err != nil {
		fail("accept: %v", err)
	}
	s, err := spdystream.NewConnection(sc, true)
	if err != nil {
		fail("conn: %v", err)
	}
	done := make(chan struct{})
	go s.Serve(func(st *spdystream.Stream) {
		st.SendReply(http.Header{}, false)
		go func() {
			data, err := ioutil.ReadAll(st)
			if err != nil && err != io.EOF {
				return
			}
			st.Write(append([]byte(st.Headers().Get("streamType")+":"), data...))
			st.Close()
		}()
	})
	go func() { <-s.CloseChan(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		fail("timeout")
	}
	fmt.Println("go server: OK")
}

func main() {
	switch os.Args[1] {
	case "client":
		client(os.Args[2])
	case "server":
		server(os.Args[2])
	}
}
