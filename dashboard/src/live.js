// The page's one graphql-ws socket, shared by every subscription any page opens, with reconnect
// and resume-after-cursor.
//
// Each connection attempt makes a new graphql-ws client with retries off, and re-subscribes
// everything with the cursors this module tracks: graphql-ws's own retry would resend the
// original subscriptions with their original `after`. The client is not lazy, so the socket
// stays open between pages while no subscription is running.
//
// A subscription whose operation declares `$after` (ModelEvents, InferenceEvents) is resumable:
// every result's cursor (the first field's `cursor`) is remembered, and after a reconnect it is
// subscribed again with `after: <its last cursor>`. One that has delivered nothing yet resumes
// after the last cursor any subscription had delivered when it started (every event stream
// reads one log, so its events since then are replayed); when there was none, it starts afresh
// and its `fresh()` handler is called again so the page re-reads with queries. A resumable
// stream ending normally means OVERFLOW: it is subscribed again at once, with `after`.
// Any other subscription (downloadProgress) is simply subscribed again after a reconnect (it
// sends its current state first) and ends for good when the server completes it.
//
// A socket that stops answering is noticed by the keep-alive: when a ping gets no pong within
// PONG_TIMEOUT_MS the socket is terminated and the connection starts again.

import { createClient } from 'graphql-ws';

const PING_INTERVAL_MS = 10_000;
const PONG_TIMEOUT_MS = 5_000;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 8_000;
/** Close codes after which retrying with the same token cannot help. */
const REJECTED = new Map([
  [4400, 'bad request'],
  [4401, 'token rejected'],
  [4403, 'forbidden'],
]);
const DECLARES_AFTER = /\$after\s*:/;

/**
 * Opens the connection. `onStatus({state, cursor, reason})` is called with state `connecting`,
 * `live`, `resumed` (connected again and resuming after `cursor`), `reconnecting` or `rejected`.
 * Returns `{ subscribe, stop }`.
 */
export function createLiveConnection({ url, token, onStatus }) {
  /** The last cursor any subscription delivered. */
  let lastCursor = null;
  let attempt = 0;
  let failures = 0;
  let stopped = false;
  let rejected = false;
  let retryTimer = null;
  let client = null;
  let connected = false;
  let hasConnected = false;
  const subscriptions = new Set();

  /** Starts `sub` on the current client (when connected). */
  function start(sub) {
    if (!client || !connected || sub.closed) return;
    const id = attempt;
    const variables = { ...sub.variables };
    const after = sub.resumable ? (sub.cursor ?? sub.startCursor) : null;
    if (after !== null) variables.after = after;
    sub.dispose = client.subscribe(
      { query: sub.query, variables },
      {
        next: (result) => {
          if (sub.closed || id !== attempt) return;
          if (result.errors?.length) {
            sub.handlers.error?.(new Error(result.errors.map((e) => e.message).join('; ')));
            return;
          }
          const data = result.data ?? {};
          const value = data[Object.keys(data)[0]];
          if (value && typeof value === 'object' && typeof value.cursor === 'string') {
            sub.cursor = value.cursor;
            lastCursor = value.cursor;
          }
          sub.handlers.next?.(value, data);
        },
        error: (error) => {
          if (sub.closed || id !== attempt) return;
          // A closed socket reaches every sink; the client's `closed` handler reconnects.
          if (error && typeof error.code === 'number') return;
          const message = Array.isArray(error) ? error.map((e) => e.message).join('; ') : String(error?.message ?? error);
          sub.closed = true;
          subscriptions.delete(sub);
          sub.handlers.error?.(new Error(message));
        },
        complete: () => {
          if (sub.closed || id !== attempt || !connected) return;
          if (sub.resumable) {
            start(sub); // OVERFLOW: continue after the cursor at once
            return;
          }
          sub.closed = true;
          subscriptions.delete(sub);
          sub.handlers.complete?.();
        },
      },
    );
    // Nothing to resume from: the page reads the current state, the subscription already sent.
    if (sub.resumable && after === null) sub.handlers.fresh?.();
  }

  function connect() {
    attempt += 1;
    const id = attempt;
    let finished = false;
    let pongTimer = null;
    connected = false;
    onStatus({ state: failures > 0 ? 'reconnecting' : 'connecting', cursor: lastCursor });
    const current = createClient({
      url,
      lazy: false,
      retryAttempts: 0,
      keepAlive: PING_INTERVAL_MS,
      connectionParams: () => ({ Authorization: `Bearer ${token}` }),
      onNonLazyError: (error) => finish(error),
      on: {
        connected: () => {
          if (id !== attempt) return;
          failures = 0;
          connected = true;
          const resuming = hasConnected && lastCursor !== null;
          hasConnected = true;
          onStatus(resuming ? { state: 'resumed', cursor: lastCursor } : { state: 'live', cursor: lastCursor });
          for (const sub of [...subscriptions]) start(sub);
        },
        ping: (received) => {
          if (received) return; // the server's ping; graphql-ws answers it
          clearTimeout(pongTimer);
          pongTimer = setTimeout(() => current.terminate(), PONG_TIMEOUT_MS);
        },
        pong: (received) => {
          if (received) clearTimeout(pongTimer);
        },
        closed: (event) => finish(event),
      },
    });
    client = current;

    function finish(reason) {
      if (finished || id !== attempt) return;
      finished = true;
      connected = false;
      clearTimeout(pongTimer);
      current.dispose();
      if (stopped) return;
      const code = reason && typeof reason.code === 'number' ? reason.code : null;
      if (REJECTED.has(code)) {
        rejected = true;
        onStatus({ state: 'rejected', cursor: lastCursor, reason: REJECTED.get(code) });
        return;
      }
      failures += 1;
      onStatus({ state: 'reconnecting', cursor: lastCursor });
      const backoff = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** (failures - 1));
      retryTimer = setTimeout(connect, backoff * (0.75 + Math.random() / 2));
    }
  }

  connect();
  return {
    /**
     * Runs subscription `query` with `variables`. `handlers`: `next(value, data)` for each
     * result (`value` is its first field), `fresh()` when a resumable one starts with nothing
     * to resume from (read the current state with queries; results arriving meanwhile should
     * be held back until that read is done), `error(error)` (a GraphQL error: the subscription
     * is over), `complete()` (a non-resumable one ended). Returns `unsubscribe()`.
     */
    subscribe(query, variables = {}, handlers = {}) {
      const sub = {
        query,
        variables,
        handlers,
        resumable: DECLARES_AFTER.test(query),
        cursor: null,
        startCursor: lastCursor,
        closed: false,
        dispose: null,
      };
      subscriptions.add(sub);
      if (rejected) queueMicrotask(() => handlers.error?.(new Error('the socket was rejected')));
      else start(sub);
      return () => {
        sub.closed = true;
        subscriptions.delete(sub);
        sub.dispose?.();
      };
    },
    stop() {
      stopped = true;
      clearTimeout(retryTimer);
      for (const sub of subscriptions) {
        sub.closed = true;
        sub.dispose?.();
      }
      subscriptions.clear();
      client?.dispose();
    },
  };
}
