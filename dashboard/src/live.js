// The live feed: the `ModelEvents` and `InferenceEvents` subscriptions over
// graphql-transport-ws (two streams on one socket), kept alive across lost connections without
// losing an event.
//
// Each connection attempt gets its own graphql-ws client with retries switched off, so this
// module alone decides what happens when a socket goes away: it remembers, per stream, the
// cursor of the last event it delivered and subscribes again with `after: <cursor>`, which
// makes the server replay whatever was appended in between before going live. (graphql-ws's own
// retry would resend the original subscriptions, with the original cursors.) A stream that has
// delivered nothing yet resumes after the first cursor any stream delivered: both read one log,
// so its events since then are replayed. A stream ending normally means OVERFLOW: connect again
// at once, also with `after`.
//
// A socket that stops answering is noticed by the keep-alive: when a ping gets no pong within
// PONG_TIMEOUT_MS the socket is terminated and the feed reconnects.

import { createClient } from 'graphql-ws';
import InferenceEvents from '@operations/InferenceEvents.graphql';
import ModelEvents from '@operations/ModelEvents.graphql';

const PING_INTERVAL_MS = 10_000;
const PONG_TIMEOUT_MS = 5_000;
const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 8_000;
const STREAMS = [
  { query: ModelEvents, field: 'modelEvents' },
  { query: InferenceEvents, field: 'inferenceEvents' },
];
/** Close codes after which retrying with the same token cannot help. */
const REJECTED = new Map([
  [4400, 'bad request'],
  [4401, 'token rejected'],
  [4403, 'forbidden'],
]);

/**
 * Starts the feed. Callbacks:
 * - `onEvent(event)` for every event and marker, in cursor order within each stream;
 * - `onStatus({state, cursor, reason})` with state `connecting`, `live`, `resumed` (connected
 *   again with `after: cursor`), `reconnecting` or `rejected`;
 * - `onFreshStart()` when a connection started without a cursor, so nothing can be replayed and
 *   the caller should read the current state with queries.
 * Returns `{ stop() }`.
 */
export function startLiveFeed({ url, token, onEvent, onStatus, onFreshStart }) {
  /** The last cursor delivered (any stream), the first one, and each stream's last. */
  let cursor = null;
  let first = null;
  const cursors = new Map();
  let attempt = 0;
  let failures = 0;
  let stopped = false;
  let retryTimer = null;
  let current = null;

  function connect() {
    attempt += 1;
    const id = attempt;
    const resuming = cursor !== null;
    let finished = false;
    let pongTimer = null;

    onStatus({ state: failures > 0 ? 'reconnecting' : 'connecting', cursor });
    const client = createClient({
      url,
      lazy: true,
      retryAttempts: 0,
      keepAlive: PING_INTERVAL_MS,
      connectionParams: () => ({ Authorization: `Bearer ${token}` }),
      on: {
        connected: () => {
          failures = 0;
          if (resuming) {
            onStatus({ state: 'resumed', cursor });
          } else {
            onStatus({ state: 'live', cursor: null });
            onFreshStart();
          }
        },
        ping: (received) => {
          if (received) return; // the server's ping; graphql-ws answers it
          clearTimeout(pongTimer);
          pongTimer = setTimeout(() => client.terminate(), PONG_TIMEOUT_MS);
        },
        pong: (received) => {
          if (received) clearTimeout(pongTimer);
        },
        closed: (event) => finish(event),
      },
    });

    const unsubscribes = STREAMS.map(({ query, field }) => {
      const after = resuming ? (cursors.get(field) ?? first) : null;
      return client.subscribe(
        { query, variables: after === null ? {} : { after } },
        {
          next: (result) => {
            const event = result.data?.[field];
            if (!event || stopped || id !== attempt) return;
            cursor = event.cursor;
            first ??= event.cursor;
            cursors.set(field, event.cursor);
            onEvent(event);
          },
          error: (error) => finish(error),
          complete: () => finish(null),
        },
      );
    });
    current = { client, unsubscribes };

    function finish(reason) {
      if (finished || id !== attempt) return;
      finished = true;
      clearTimeout(pongTimer);
      client.dispose();
      if (stopped) return;
      const code = reason && typeof reason.code === 'number' ? reason.code : null;
      if (REJECTED.has(code)) {
        onStatus({ state: 'rejected', cursor, reason: REJECTED.get(code) });
        return;
      }
      if (reason === null) {
        connect(); // the server ended a stream (OVERFLOW): continue after the cursors at once
        return;
      }
      failures += 1;
      onStatus({ state: 'reconnecting', cursor });
      const backoff = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** (failures - 1));
      retryTimer = setTimeout(connect, backoff * (0.75 + Math.random() / 2));
    }
  }

  connect();
  return {
    stop() {
      stopped = true;
      clearTimeout(retryTimer);
      if (current) {
        for (const unsubscribe of current.unsubscribes) unsubscribe();
        current.client.dispose();
      }
    },
  };
}
