// Queries and mutations over plain fetch; the operations are the committed ones in
// graphql/operations (inlined by the build with their fragments).

/** The request failed, or the server answered with GraphQL errors. */
export class ApiError extends Error {}

/**
 * POSTs `query` with `variables` to /graphql and returns `data`. Throws ApiError on a transport
 * failure or when the response carries `errors` (expected failures are union members instead,
 * see `userError`).
 */
export async function request(query, variables = {}, token = null) {
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch('/graphql', { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
  } catch (error) {
    throw new ApiError(`modelplane is unreachable (${error.message})`);
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`HTTP ${response.status} from /graphql`);
  }
  if (Array.isArray(body.errors) && body.errors.length > 0) {
    throw new ApiError(body.errors.map((e) => e.message).join('; '));
  }
  if (!response.ok || !body.data) throw new ApiError(`HTTP ${response.status} from /graphql`);
  return body.data;
}

/**
 * For a result union: null when `result` is the `expected` type, else a readable message from
 * the UserError member (`errorMessage`, plus the offending field when there is one).
 */
export function userError(result, expected) {
  if (result && result.__typename === expected) return null;
  if (!result) return 'no result';
  const field = result.field ?? result.conflictField;
  return field ? `${result.errorMessage} (${field})` : (result.errorMessage ?? result.__typename);
}

/**
 * Wraps `load(key)` so that at most one run per key is under way. A call made meanwhile is
 * answered by one more run after the current one: the last answer is never older than the last
 * call, and two answers for a key never land out of order.
 */
export function coalesce(load) {
  const running = new Map();
  return (key) => {
    const current = running.get(key);
    if (current) {
      current.again = true;
      return current.done;
    }
    const state = { again: false, done: null };
    running.set(key, state);
    state.done = (async () => {
      try {
        do {
          state.again = false;
          await load(key);
        } while (state.again);
      } finally {
        running.delete(key);
      }
    })();
    return state.done;
  };
}
