package sockopt_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// Dial an MPTCP connection with Go's dialer, send a megabyte, and read the per-subflow figures.
// The connection runs between two network namespaces joined by two veth paths, whose client path
// manager opens a second subflow on the second path (internal/lab; needs root).
func Example() {
	l, err := lab.New(lab.Config{Paths: 2, Subflows: true})
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	ln, err := lab.ListenIn(context.Background(), l.Server, "10.100.0.2:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, s)
			s.Close()
		}
	}()

	// The dialer: MPTCP on, from inside the client namespace.
	var d net.Dialer
	d.SetMultipathTCP(true)
	var c net.Conn
	if err := netns.Do(l.Client, func() (err error) { c, err = d.Dial("tcp", "10.100.0.2:8080"); return err }); err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// The data sequence number acknowledged so far (every kernel since 5.9 has it; the byte
	// counters such as mptcpi_bytes_acked came in 6.5).
	before, err := sockopt.Info(c.(*net.TCPConn))
	if err != nil {
		log.Fatal(err)
	}

	// The transfer; the second subflow joins once the connection is fully established.
	const size = 1 << 20
	if _, err := c.Write(make([]byte, size)); err != nil {
		log.Fatal(err)
	}
	var f *sockopt.Full
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if f, err = sockopt.FullInfo(c.(*net.TCPConn)); err != nil {
			log.Fatal(err)
		}
		if len(f.Subflows) == 2 && f.Info.SndUna-before.SndUna == size {
			break
		}
	}

	// The per-subflow figures.
	fmt.Printf("connection: %d subflows, %d bytes acked at the data level\n", len(f.Subflows), f.Info.SndUna-before.SndUna)
	var carried uint64
	for i, s := range f.Subflows {
		// s.ID is the kernel's subflow id where MPTCP_FULL_INFO gives it (6.5+; f.IDs), else 0.
		fmt.Printf("subflow %d: %v -> %v %s mss %d\n", i+1, s.Addr.Local.Addr(), s.Addr.Remote, s.TCP.StateName(), s.TCP.SndMSS)
		carried += s.TCP.BytesSent - s.TCP.BytesRetrans
	}
	fmt.Println("the subflows carried every byte:", carried >= size)
	// Output:
	// connection: 2 subflows, 1048576 bytes acked at the data level
	// subflow 1: 10.100.0.1 -> 10.100.0.2:8080 ESTAB mss 1448
	// subflow 2: 10.101.0.1 -> 10.100.0.2:8080 ESTAB mss 1448
	// the subflows carried every byte: true
}
