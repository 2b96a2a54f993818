// Check, then write: hold leasehold's lease before each write, with its token.
//
//	go run check_then_write.go [API] [COUNT]
//
// store stands for your storage's write: it must refuse a token lower than
// the highest it has seen (see examples/postgres for a PostgreSQL one).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

var api = "http://127.0.0.1:4040"

type Leader struct {
	IsLeader     bool    `json:"is_leader"`
	FencingToken *uint64 `json:"fencing_token"`
	DeadlineNs   *int64  `json:"lease_deadline_boottime_ns"`
}

// ask GETs /v1/leader; a 503 (not the leader) has the same body as a 200.
func ask() (Leader, error) {
	var l Leader
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(api + "/v1/leader")
	if err != nil {
		return l, err
	}
	defer resp.Body.Close()
	return l, json.NewDecoder(resp.Body).Decode(&l)
}

func boottime() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		log.Fatal(err)
	}
	return ts.Nano()
}

// Lease is the token and deadline this node holds, if it leads.
type Lease struct {
	mu       sync.Mutex
	token    uint64
	deadline int64
	events   int           // how many watch events came
	changed  chan struct{} // closed and replaced at each event
}

// grant keeps an answer of /v1/leader, unless a watch event came since it
// was asked for (events != l.events): then it may be stale.
func (l *Lease) grant(leader Leader, events int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if events == l.events && leader.IsLeader && leader.FencingToken != nil && leader.DeadlineNs != nil {
		l.token, l.deadline = *leader.FencingToken, *leader.DeadlineNs
	}
}

// revoke is a watch event: whatever it says, ask again before the next write.
func (l *Lease) revoke() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events++
	l.deadline = 0
	close(l.changed)
	l.changed = make(chan struct{})
}

// tokenNow is the token while the lease lasts on CLOCK_BOOTTIME, how many
// events came, and a channel closed at the next one.
func (l *Lease) tokenNow() (uint64, bool, int, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.token, boottime() < l.deadline, l.events, l.changed
}

// follow reads /v1/watch: a hand-over ends the lease before its deadline.
func (l *Lease) follow() {
	for {
		if resp, err := http.Get(api + "/v1/watch"); err == nil {
			lines := bufio.NewScanner(resp.Body)
			for lines.Scan() {
				if bytes.HasPrefix(lines.Bytes(), []byte("data: ")) {
					l.revoke()
				}
			}
			resp.Body.Close()
		}
		l.revoke()
		time.Sleep(time.Second)
	}
}

func store(token uint64, record int) {
	fmt.Println(token, record)
}

func main() {
	count := 100
	if len(os.Args) > 1 {
		api = os.Args[1]
	}
	if len(os.Args) > 2 {
		var err error
		if count, err = strconv.Atoi(os.Args[2]); err != nil {
			log.Fatalf("COUNT: %v", err)
		}
	}
	lease := &Lease{changed: make(chan struct{})}
	go lease.follow()
	for record := 0; record < count; {
		token, held, events, changed := lease.tokenNow()
		if held {
			store(token, record)
			record++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		// The lease ran out (renewals send no event) or is elsewhere: ask.
		leader, err := ask()
		if err != nil {
			time.Sleep(100 * time.Millisecond) // the sidecar does not answer: no lease
			continue
		}
		lease.grant(leader, events)
		if !leader.IsLeader {
			select { // until who leads changes, or 1 s
			case <-changed:
			case <-time.After(time.Second):
			}
		}
	}
}
