// The inference pane: one model's inference in detail (summary, phase timeline, the engine's last
// log lines) and a small form to start it with a chosen engine, GPUs and replicas.
//
// It reads `ModelInference`, then `InferenceLogs`, when it opens, on Refresh, whenever main.js
// says the model changed (an event about it or its inference), and every AUTO_REFRESH_MS while
// the inference is not STOPPED. Once a stop completes the model has no inference any more
// (`model.inference` is null); the pane then keeps showing how the one it showed ended, read by
// its id with the `Inference` query (stopped inferences stay readable as history).

import Inference from '@operations/Inference.graphql';
import InferenceLogs from '@operations/InferenceLogs.graphql';
import ModelInference from '@operations/ModelInference.graphql';
import { $, fill } from './dom.js';
import { coalesce } from './graphql.js';
import { cannotStart, renderInferenceSummary, renderLogs, renderTimeline } from './view.js';

const AUTO_REFRESH_MS = 3000;
const LOG_TAIL = 200;

/** The start form's choices as an `InferenceInput`; null when everything is left to defaults. */
function formInput() {
  const engine = $('#start-engine').value;
  const gpu = $('#start-gpu').value.trim();
  const replicas = $('#start-replicas').value.trim();
  const input = {};
  if (engine) input.engine = engine;
  if (gpu !== '') input.resources = { gpu: Number(gpu) };
  if (replicas !== '') input.replicas = Number(replicas);
  return Object.keys(input).length > 0 ? input : null;
}

/**
 * `query(operation, variables)` runs a request; `model(id)` is the page's copy of a model;
 * `start(model, input)` and `stop(model)` run the mutations; `canEdit()` and `noteFor(id)` are
 * the rows' own.
 */
export function createInferencePane({ query, model, start, stop, canEdit, noteFor }) {
  const pane = $('#inference-pane');
  let modelId = null;
  /** The model as last read here, with its full inference (InferenceFields). */
  let shown = null;
  let timer = null;

  function renderNote() {
    const note = modelId === null ? null : noteFor(modelId);
    const message = $('#pane-message');
    message.textContent = note?.text ?? '';
    message.dataset.kind = note?.kind ?? '';
  }

  function render() {
    const inference = shown.inference;
    fill($('#pane-model'), shown.displayName ?? shown.name);
    renderInferenceSummary($('#pane-summary'), shown, inference);
    renderTimeline($('#pane-timeline'), inference);
    const blocker = cannotStart(shown);
    $('#start-form').hidden = inference?.enabled === true;
    $('#start-submit').disabled = blocker !== null || !canEdit();
    $('#start-submit').title = canEdit() ? (blocker ?? '') : 'needs the editor role';
    $('#pane-stop').hidden = inference?.enabled !== true;
    $('#pane-stop').disabled = !canEdit();
    const live = inference && inference.phase !== 'STOPPED';
    $('#pane-auto').textContent = live ? `refreshed every ${AUTO_REFRESH_MS / 1000} s` : '';
    pane.dataset.phase = inference?.phase ?? '';
    renderNote();
  }

  const load = coalesce(async (id) => {
    if (id !== modelId) return;
    let data;
    try {
      data = await query(ModelInference, { id });
    } catch (error) {
      if (id === modelId) $('#pane-summary').textContent = `Could not read the inference: ${error.message}`;
      return;
    }
    if (id !== modelId) return;
    if (!data.model) {
      close();
      return;
    }
    const previous = shown?.id === id ? shown.inference : null;
    shown = { ...model(id), ...data.model };
    if (!shown.inference && previous?.id) {
      const last = await query(Inference, { id: previous.id }).catch(() => null);
      if (id !== modelId) return;
      if (last?.inference) shown.inference = last.inference;
    }
    render();
    const inference = shown.inference;
    if (!inference) {
      renderLogs($('#pane-logs'), []);
      return;
    }
    try {
      const logs = await query(InferenceLogs, { id: inference.id, tail: LOG_TAIL });
      if (id === modelId) renderLogs($('#pane-logs'), logs.inferenceLogs?.lines ?? []);
    } catch (error) {
      if (id === modelId) renderLogs($('#pane-logs'), [`could not read the logs: ${error.message}`]);
    }
  });

  function open(id) {
    const opening = id !== modelId;
    modelId = id;
    pane.hidden = false;
    pane.dataset.modelId = id;
    if (opening) {
      shown = { ...model(id) };
      $('#start-form').reset();
      fill($('#pane-model'), shown.displayName ?? shown.name ?? id);
      fill($('#pane-summary'));
      fill($('#pane-timeline'));
      renderLogs($('#pane-logs'), []);
      renderNote();
    }
    clearInterval(timer);
    timer = setInterval(() => {
      if (shown?.inference && shown.inference.phase !== 'STOPPED') load(modelId);
    }, AUTO_REFRESH_MS);
    pane.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
    return load(id);
  }

  function close() {
    clearInterval(timer);
    timer = null;
    modelId = null;
    shown = null;
    pane.hidden = true;
    delete pane.dataset.modelId;
  }

  $('#pane-close').addEventListener('click', close);
  $('#pane-refresh').addEventListener('click', () => modelId !== null && load(modelId));
  $('#pane-stop').addEventListener('click', () => shown && stop(shown));
  $('#start-form').addEventListener('submit', (event) => {
    event.preventDefault();
    if (shown) start(shown, formInput());
  });

  return {
    open,
    close,
    /** Reads the pane again when it shows model `id`. */
    changed(id) {
      if (id === modelId) load(id);
    },
    /** Shows the model's note (an error from Start or Stop) when the pane is on it. */
    noteChanged(id) {
      if (id === modelId) renderNote();
    },
  };
}
