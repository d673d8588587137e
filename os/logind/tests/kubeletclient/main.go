// Command kubeletclient drives cairn's logind shim with kubelet's own client code
// (k8s.io/kubernetes/pkg/kubelet/nodeshutdown/systemd), in the order kubelet's
// node shutdown manager uses it, and prints one line per step on stdout:
//
//	connected
//	delay <InhibitDelayMaxUSec in microseconds>
//	inhibited fd=<n>
//	monitoring
//	event shutdown=<true|false>   (false: the lock is taken again, "inhibited" follows)
//	released
//
// It exits 0 after releasing the lock on PrepareForShutdown(true), non-zero on any
// error (printed as "error: ..." on stderr). The bus comes from
// DBUS_SYSTEM_BUS_ADDRESS, as for kubelet.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/kubelet/nodeshutdown/systemd"
)

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "error: "+format+"\n", args...)
	os.Exit(code)
}

func main() {
	hold := flag.Duration("hold", 0, "how long to 'kill pods' before releasing the lock")
	wait := flag.Duration("timeout", time.Minute, "how long to wait for PrepareForShutdown(true)")
	flag.Parse()

	bus, err := systemd.NewDBusCon()
	if err != nil {
		fail(2, "connecting to the system bus: %v", err)
	}
	fmt.Println("connected")

	delay, err := bus.CurrentInhibitDelay()
	if err != nil {
		fail(2, "%v", err)
	}
	fmt.Printf("delay %d\n", delay.Microseconds())

	lock, err := bus.InhibitShutdown()
	if err != nil {
		fail(2, "%v", err)
	}
	fmt.Printf("inhibited fd=%d\n", lock)

	events, err := bus.MonitorShutdown(klog.Background())
	if err != nil {
		fail(2, "monitoring shutdown: %v", err)
	}
	fmt.Println("monitoring")

	deadline := time.After(*wait)
	for {
		select {
		case shuttingDown, ok := <-events:
			if !ok {
				fail(3, "the bus connection closed before PrepareForShutdown(true)")
			}
			fmt.Printf("event shutdown=%t\n", shuttingDown)
			if !shuttingDown {
				// A cancelled shutdown: take the lock again, as kubelet does.
				if lock, err = bus.InhibitShutdown(); err != nil {
					fail(2, "%v", err)
				}
				fmt.Printf("inhibited fd=%d\n", lock)
				continue
			}
			time.Sleep(*hold)
			if err := bus.ReleaseInhibitLock(lock); err != nil {
				fail(2, "%v", err)
			}
			fmt.Println("released")
			return
		case <-deadline:
			fail(4, "no PrepareForShutdown(true) within %v", *wait)
		}
	}
}
