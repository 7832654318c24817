// Command fanoutclient is bench/fanout.py's subscriber process: COUNT graphql-transport-ws
// subscribers to one subscription, each on its own WebSocket, written in Go so that receiving
// 100,000 messages a second costs the shared 2-core machine little and the benchmark measures
// the server rather than its clients (Python clients spent more CPU receiving than the server
// spent sending).
//
// Usage: fanoutclient URL TOKEN COUNT MODEL_ID QUERY (a modelEvents subscription)
//
// It prints READY once every subscriber has sent `subscribe`, then records each event: the
// cursor, and the latency (receipt time minus the event's `at`, same machine, same clock) of
// live deliveries. On OVERFLOW a subscriber reconnects with `after` set to the marker's
// cursor, as a real client does; replayed events count as received but not for latency. When
// stdin closes it prints one JSON line: a list with, per subscriber, count (distinct cursors),
// received (events, duplicates included), latencies (seconds), overflows, resyncs and
// last_progress.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

type event struct {
	Cursor   string  `json:"cursor"`
	Type     string  `json:"type"`
	At       *string `json:"at"`
	Progress *struct {
		BytesDone json.Number `json:"bytesDone"`
	} `json:"progress"`
}

type message struct {
	Type    string `json:"type"`
	Payload struct {
		Data struct {
			ModelEvents *event `json:"modelEvents"`
		} `json:"data"`
	} `json:"payload"`
}

type result struct {
	Count        int       `json:"count"`
	Received     int       `json:"received"`
	Latencies    []float64 `json:"latencies"`
	Overflows    int       `json:"overflows"`
	Resyncs      int       `json:"resyncs"`
	LastProgress *int64    `json:"last_progress"`
	Error        string    `json:"error,omitempty"`

	cursors map[int64]struct{}
}

type config struct {
	url, token, modelID, query string
}

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: fanoutclient URL TOKEN COUNT MODEL_ID QUERY")
		os.Exit(2)
	}
	count, err := strconv.Atoi(os.Args[3])
	if err != nil || count < 1 {
		fmt.Fprintln(os.Stderr, "COUNT must be a positive number")
		os.Exit(2)
	}
	cfg := config{url: os.Args[1], token: os.Args[2], modelID: os.Args[4], query: os.Args[5]}
	results := make([]*result, count)
	var ready sync.WaitGroup
	stop := make(chan struct{})
	var done sync.WaitGroup
	for i := range results {
		results[i] = &result{cursors: map[int64]struct{}{}, Latencies: []float64{}}
		ready.Add(1)
		done.Add(1)
		go func(r *result) {
			defer done.Done()
			subscriber(cfg, r, &ready, stop)
		}(results[i])
		if i%50 == 49 {
			time.Sleep(50 * time.Millisecond) // do not stampede the server's accept queue
		}
	}
	ready.Wait()
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes stdin when the run is over
	close(stop)
	done.Wait()
	for _, r := range results {
		r.Count = len(r.cursors)
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	if err := json.NewEncoder(out).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = out.Flush()
}

// subscriber subscribes, and after an OVERFLOW subscribes again with `after`, until stop.
func subscriber(cfg config, r *result, ready *sync.WaitGroup, stop <-chan struct{}) {
	signalled := false
	signal := func() {
		if !signalled {
			signalled = true
			ready.Done()
		}
	}
	defer signal()
	var after *string
	for {
		next, err := subscribeOnce(cfg, r, after, signal, stop)
		if err != nil {
			r.Error = err.Error()
			return
		}
		if next == nil {
			return
		}
		r.Overflows++
		after = next
	}
}

func subscribeOnce(
	cfg config, r *result, after *string, signal func(), stop <-chan struct{},
) (*string, error) {
	dialer := websocket.Dialer{Subprotocols: []string{"graphql-transport-ws"}}
	conn, _, err := dialer.Dial(cfg.url, http.Header{})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	go func() {
		<-stop
		_ = conn.Close() // unblocks ReadMessage below
	}()
	init := map[string]any{"type": "connection_init", "payload": map[string]string{"Authorization": cfg.token}}
	if err := conn.WriteJSON(init); err != nil {
		return nil, err
	}
	var ack message
	if err := conn.ReadJSON(&ack); err != nil || ack.Type != "connection_ack" {
		return nil, fmt.Errorf("connection_init refused (%v, %q)", err, ack.Type)
	}
	variables := map[string]any{"after": after}
	if cfg.modelID != "" {
		variables["modelId"] = cfg.modelID
	}
	subscribe := map[string]any{
		"id": "1", "type": "subscribe",
		"payload": map[string]any{"query": cfg.query, "variables": variables},
	}
	if err := conn.WriteJSON(subscribe); err != nil {
		return nil, err
	}
	signal()
	var buf bytes.Buffer // reused: one allocation per subscriber, not per message
	for {
		_, reader, err := conn.NextReader()
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(reader)
		}
		received := time.Now()
		if err != nil {
			select {
			case <-stop:
				return nil, nil
			default:
				return nil, err
			}
		}
		ev, ok := quickEvent(buf.Bytes())
		if !ok { // anything but an ordinary event: decode it in full
			var msg message
			if err := json.Unmarshal(buf.Bytes(), &msg); err != nil {
				return nil, err
			}
			if msg.Type != "next" {
				return nil, nil // complete or error: the stream ended
			}
			if msg.Payload.Data.ModelEvents == nil {
				continue
			}
			ev = *msg.Payload.Data.ModelEvents
		}
		switch ev.Type {
		case "OVERFLOW":
			cursor := ev.Cursor
			return &cursor, nil
		case "RESYNC_REQUIRED":
			r.Resyncs++
			continue
		}
		cursor, err := strconv.ParseInt(ev.Cursor, 10, 64)
		if err != nil {
			return nil, err
		}
		r.cursors[cursor] = struct{}{}
		r.Received++
		if ev.At != nil && after == nil { // replayed events are late by design
			at, err := time.Parse(time.RFC3339Nano, *ev.At)
			if err != nil {
				return nil, err
			}
			r.Latencies = append(r.Latencies, received.Sub(at).Seconds())
		}
		if ev.Progress != nil {
			done, err := ev.Progress.BytesDone.Int64()
			if err == nil {
				r.LastProgress = &done
			}
		}
	}
}

var (
	nextPrefix    = []byte(`{"id":"1","type":"next","payload":{"data":{"modelEvents":{`)
	progressField = []byte(`"progress":`)
	noProgress    = []byte(`"progress":null`)
)

// quickEvent reads an ordinary event without reflection (json.Unmarshal was most of this
// process's CPU at 100,000 messages a second): a `next` message of this client's operation
// whose event has string cursor, type and at, and null progress. Anything else (markers,
// progress, errors, other layouts) returns ok=false and is decoded in full.
func quickEvent(raw []byte) (event, bool) {
	if !bytes.HasPrefix(raw, nextPrefix) ||
		(bytes.Contains(raw, progressField) && !bytes.Contains(raw, noProgress)) {
		return event{}, false
	}
	body := raw[len(nextPrefix):]
	cursor, ok1 := stringField(body, "cursor")
	kind, ok2 := stringField(body, "type")
	at, ok3 := stringField(body, "at")
	if !ok1 || !ok2 || !ok3 {
		return event{}, false
	}
	return event{Cursor: cursor, Type: kind, At: &at}, true
}

// stringField is the value of `"name":"value"` in body, when the value has no escapes.
func stringField(body []byte, name string) (string, bool) {
	key := []byte(`"` + name + `":"`)
	start := bytes.Index(body, key)
	if start < 0 {
		return "", false
	}
	value := body[start+len(key):]
	end := bytes.IndexByte(value, '"')
	if end < 0 || bytes.IndexByte(value[:end], '\\') >= 0 {
		return "", false
	}
	return string(value[:end]), true
}
