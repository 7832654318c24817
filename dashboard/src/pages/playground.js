// The Playground page: chat with a running model through the gateway, as any OpenAI client
// would: `POST /v1/chat/completions` with `stream: true`, read as server-sent events with fetch
// and a ReadableStream (EventSource cannot POST or send a header).
//
// The credential is the signed-in token, or an API key typed in the page (kept in the form
// only, never stored). The model list is the gateway's own `GET /v1/models` (the models with a
// RUNNING inference), read when the page opens, on Refresh and on every inference event.
//
// Figures for each answer: time to first token (from sending to the first content delta), and
// tokens per second over the generation (completion tokens, from the stream's `usage` when the
// engine sends it, else one per content delta; the tokens after the first, divided by the time
// from the first token to the last, so the wait for the first one counts only in TTFT).
//
// Failures are shown as the gateway words them, with a hint: 401 (credential), 404 (no such
// model), 409 (not running), 429, the engine's own failure (500), 502/504 (it could not be
// reached or did not answer), and an error event mid-stream. "Stop" aborts the request, which
// makes the gateway close the upstream.

import './ops.css';
import InferenceEvents from '@operations/InferenceEvents.graphql';
import { fill, h } from '../dom.js';
import { batched, pageHead, problem } from './ops-kit.js';

const MODELS_URL = '/v1/models';
const CHAT_URL = '/v1/chat/completions';
/** A burst of inference events costs one read of the model list. */
const EVENT_BATCH_MS = 300;

/** The gateway's error answer as one line: `401 invalid_api_key: Missing credentials…`. */
export async function describeFailure(response) {
  let detail = '';
  try {
    const body = await response.json();
    const error = body.error ?? {};
    detail = [error.code ?? error.type, error.message].filter(Boolean).join(': ');
  } catch {
    detail = response.statusText;
  }
  const hints = {
    401: 'the credential was refused (sign in again, or check the API key)',
    404: 'no model of that name in your organisation',
    409: 'the model is not running (start it on the Models page)',
    429: 'rate limited: try again shortly',
    500: 'the engine failed',
    502: 'the engine could not be reached or failed',
    504: 'the engine did not answer in time',
  };
  return `${response.status} ${detail || response.statusText}${hints[response.status] ? ` — ${hints[response.status]}` : ''}`;
}

/**
 * Reads server-sent events from `body` (a ReadableStream of bytes), calling `onData(json)` for
 * each `data:` event until `[DONE]` or the end. Lines split across chunks are joined.
 */
export async function readEvents(body, onData) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value ?? new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''))
        .join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      onData(JSON.parse(data));
    }
    if (done) return;
  }
}

function figures(stats) {
  const parts = [];
  if (stats.ttftMs !== null) parts.push(h('span', { 'data-figure': 'ttft' }, `first token ${(stats.ttftMs / 1000).toFixed(2)} s`));
  if (stats.tokensPerSecond !== null) parts.push(h('span', { 'data-figure': 'tps' }, `${stats.tokensPerSecond.toFixed(1)} tokens/s`));
  if (stats.tokens !== null) parts.push(h('span', { 'data-figure': 'tokens' }, `${stats.tokens} tokens${stats.counted ? ' (counted)' : ''}`));
  if (stats.totalMs !== null) parts.push(h('span', { 'data-figure': 'total' }, `${(stats.totalMs / 1000).toFixed(2)} s in all`));
  return parts;
}

export function mount(root, ctx) {
  const model = h('select', { id: 'chat-model', name: 'model', required: true });
  const key = h('input', { id: 'chat-key', type: 'password', placeholder: 'signed-in token', autocomplete: 'off', spellcheck: 'false' });
  const maxTokens = h('input', { id: 'chat-max-tokens', type: 'number', min: '1', placeholder: 'engine default', inputmode: 'numeric' });
  const temperature = h('input', { id: 'chat-temperature', type: 'number', min: '0', max: '2', step: '0.1', placeholder: 'default' });
  const text = h('textarea', { id: 'chat-input', rows: '3', required: true, placeholder: 'Say something (Enter sends, Shift+Enter for a new line)' });
  const send = h('button', { type: 'submit', id: 'chat-send' }, 'Send');
  const stop = h('button.ghost', { type: 'button', id: 'chat-stop', disabled: true }, 'Stop');
  const clear = h('button.ghost', { type: 'button', id: 'chat-clear' }, 'Clear');
  const transcript = h('ol.ops-chat', { id: 'chat-log', 'aria-live': 'polite', 'aria-label': 'Conversation' });
  const modelsNote = h('p.message', { id: 'chat-models-note', role: 'status' });
  const message = h('p.message', { role: 'alert', id: 'chat-message' });
  const refresh = h('button.ghost', { type: 'button', onclick: () => loadModels() }, 'Refresh models');
  const form = h(
    'form.ops-chat-form',
    { id: 'chat-form', autocomplete: 'off', 'aria-label': 'Chat' },
    h(
      'div.add-form',
      {},
      h('div.field.grow', { 'data-field': 'model' }, h('label', { for: 'chat-model' }, 'Running model'), model),
      h('div.field.grow', { 'data-field': 'key' }, h('label', { for: 'chat-key' }, 'API key (optional)'), key),
      h('div.field', { 'data-field': 'max_tokens' }, h('label', { for: 'chat-max-tokens' }, 'Max tokens'), maxTokens),
      h('div.field', { 'data-field': 'temperature' }, h('label', { for: 'chat-temperature' }, 'Temperature'), temperature),
    ),
    modelsNote,
    transcript,
    h('div.field', { 'data-field': 'messages' }, h('label', { for: 'chat-input' }, 'Message'), text),
    h('div.ops-buttons', {}, send, stop, clear),
  );
  root.append(h('section.card.ops-page', { 'data-page': 'playground' }, pageHead('Playground', refresh), form, message));

  let gone = false;
  let running = null; // the AbortController of the answer being streamed
  const history = []; // {role, content} sent with every request

  function credential() {
    return key.value.trim().replace(/^Bearer\s+/i, '') || ctx.token();
  }

  async function loadModels() {
    try {
      const response = await fetch(MODELS_URL, { headers: { authorization: `Bearer ${credential()}` } });
      if (gone) return;
      if (!response.ok) {
        problem(modelsNote, `Could not list the running models: ${await describeFailure(response)}`);
        return;
      }
      const names = (await response.json()).data.map((m) => m.id).sort();
      const chosen = model.value;
      fill(model, names.map((name) => h('option', { value: name, selected: name === chosen }, name)));
      model.disabled = names.length === 0;
      if (names.length === 0) {
        problem(modelsNote, 'No model is running: start one on the Models page, then come back (the list follows inference events).', 'warn');
      } else {
        problem(modelsNote, `${names.length} running model(s).`, 'ok');
      }
      modelsReady();
    } catch (error) {
      if (!gone) problem(modelsNote, `modelplane is unreachable (${error.message})`);
    }
  }

  function modelsReady() {
    send.disabled = running !== null || model.options.length === 0;
  }

  function bubble(role, content) {
    const body = h('div.ops-chat-text', {}, content);
    const meta = h('div.ops-chat-meta');
    const item = h('li', { dataset: { role } }, h('div.ops-chat-role', {}, role), body, meta);
    transcript.append(item);
    item.scrollIntoView({ block: 'nearest' });
    return { item, body, meta };
  }

  async function ask(content) {
    const chosen = model.value;
    history.push({ role: 'user', content });
    bubble('user', content);
    const answer = bubble('assistant', '');
    answer.item.dataset.state = 'streaming';
    const payload = { model: chosen, messages: [...history], stream: true, stream_options: { include_usage: true } };
    if (maxTokens.value) payload.max_tokens = Number(maxTokens.value);
    if (temperature.value) payload.temperature = Number(temperature.value);
    const stats = { ttftMs: null, tokensPerSecond: null, tokens: null, counted: false, totalMs: null };
    running = new AbortController();
    stop.disabled = false;
    modelsReady();
    const started = performance.now();
    let first = null;
    let last = null;
    let deltas = 0;
    let usageTokens = null;
    let reply = '';
    try {
      const response = await fetch(CHAT_URL, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: `Bearer ${credential()}` },
        body: JSON.stringify(payload),
        signal: running.signal,
      });
      if (!response.ok) throw new Error(await describeFailure(response));
      const streamed = (response.headers.get('content-type') ?? '').startsWith('text/event-stream');
      const onData = (chunk) => {
        if (chunk.error) throw new Error(`the stream ended with an error: ${chunk.error.message ?? JSON.stringify(chunk.error)}`);
        if (chunk.usage?.completion_tokens != null) usageTokens = chunk.usage.completion_tokens;
        const delta = chunk.choices?.[0]?.delta?.content ?? chunk.choices?.[0]?.message?.content ?? '';
        if (!delta) return;
        const now = performance.now();
        first ??= now;
        last = now;
        deltas += 1;
        reply += delta;
        answer.body.textContent = reply;
        stats.ttftMs = first - started;
        fill(answer.meta, figures(stats));
      };
      if (streamed) await readEvents(response.body, onData);
      else onData(await response.json()); // an engine that ignored `stream`
      answer.item.dataset.state = 'done';
    } catch (error) {
      const aborted = error.name === 'AbortError';
      answer.item.dataset.state = aborted ? 'stopped' : 'failed';
      answer.body.append(h('div.field-error', { role: 'alert' }, aborted ? 'stopped' : error.message.startsWith('4') || error.message.startsWith('5') ? error.message : `Failed: ${error.message}`));
    } finally {
      const ended = performance.now();
      stats.totalMs = ended - started;
      stats.tokens = usageTokens ?? (deltas || null);
      stats.counted = usageTokens === null && deltas > 0;
      if (first !== null && stats.tokens > 1 && last > first) {
        stats.tokensPerSecond = ((stats.tokens - 1) / (last - first)) * 1000; // the first token's wait is TTFT
      }
      fill(answer.meta, figures(stats));
      if (reply) history.push({ role: 'assistant', content: reply });
      else history.pop(); // nothing came back: do not resend a turn without its answer
      running = null;
      stop.disabled = true;
      modelsReady();
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const content = text.value.trim();
    if (!content || running) return;
    if (!model.value) {
      problem(message, 'No model is running: start one on the Models page.');
      return;
    }
    problem(message, null);
    text.value = '';
    ask(content);
    text.focus();
  });
  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener('click', () => running?.abort());
  clear.addEventListener('click', () => {
    history.length = 0;
    fill(transcript);
  });
  key.addEventListener('change', () => loadModels());

  loadModels();
  const soon = batched(loadModels, EVENT_BATCH_MS);
  const unsubscribe = ctx.subscribe(InferenceEvents, {}, { next: soon });
  return () => {
    gone = true;
    soon.cancel();
    running?.abort();
    unsubscribe?.();
  };
}
