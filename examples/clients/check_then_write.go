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

// ask GETs path; a 503 (not the leader) has the same body as a 200.
func ask(path string, timeout time.Duration) (Leader, error) {
	var l Leader
	client := http.Client{Timeout: timeout}
	resp, err := client.Get(api + path)
	if err != nil {
		return l, err
	}
	defer resp.Body.Close()
	return l, json.NewDecoder(resp.Body).Decode(&l)
}

func boottime() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return ts.Nano()
}

// Lease is the token and deadline this node holds, if it leads.
type Lease struct {
	mu       sync.Mutex
	token    uint64
	deadline int64
	events   int // how many watch events were applied
}

// update applies a leader JSON; an answer asked for before the latest watch
// event (events != l.events) may be stale and is dropped.
func (l *Lease) update(leader Leader, events int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if events < 0 {
		l.events++
	} else if events != l.events {
		return
	}
	l.token, l.deadline = 0, 0
	if leader.IsLeader {
		l.token, l.deadline = *leader.FencingToken, *leader.DeadlineNs
	}
}

// tokenNow is the token while the lease lasts on CLOCK_BOOTTIME.
func (l *Lease) tokenNow() (uint64, int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.token, l.events, boottime() < l.deadline
}

// follow reads /v1/watch: a hand-over ends the lease before its deadline.
func (l *Lease) follow() {
	for {
		if resp, err := http.Get(api + "/v1/watch"); err == nil {
			lines := bufio.NewScanner(resp.Body)
			for lines.Scan() {
				if line := lines.Bytes(); bytes.HasPrefix(line, []byte("data: ")) {
					var leader Leader
					if json.Unmarshal(line[6:], &leader) == nil {
						l.update(leader, -1)
					}
				}
			}
			resp.Body.Close()
		}
		l.update(Leader{}, -1)
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
		count, _ = strconv.Atoi(os.Args[2])
	}
	lease := &Lease{}
	go lease.follow()
	for record := 0; record < count; {
		token, events, held := lease.tokenNow()
		if held {
			store(token, record)
			record++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		// The lease ran out (renewals send no event) or is elsewhere: ask.
		leader, err := ask("/v1/leader", 2*time.Second)
		if err != nil {
			time.Sleep(100 * time.Millisecond) // the sidecar does not answer: no lease
			continue
		}
		lease.update(leader, events)
		if !leader.IsLeader {
			ask("/v1/leader?wait=10s", 12*time.Second) // until who leads changes
		}
	}
}
