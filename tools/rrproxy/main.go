// Command rrproxy is a round-robin reverse proxy for tests and local
// multi-replica runs: each request goes to the next backend, with no
// stickiness, as a plain load balancer would send them. It streams bodies
// both ways and prints its address once listening.
//
//	rrproxy -listen 127.0.0.1:0 http://127.0.0.1:5001 http://127.0.0.1:5002 …
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"

	"github.com/berth-registry/berth/internal/roundrobin"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: rrproxy [-listen addr] backend-url...")
		os.Exit(2)
	}
	var backends []*url.URL
	for _, arg := range flag.Args() {
		u, err := url.Parse(arg)
		if err != nil || u.Host == "" {
			log.Fatalf("rrproxy: bad backend URL %q", arg)
		}
		backends = append(backends, u)
	}
	proxy := roundrobin.New(backends)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("rrproxy: %v", err)
	}
	fmt.Printf("rrproxy listening on %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, proxy))
}
