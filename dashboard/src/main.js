// The operator dashboard: boots the page, keeps the token, loads the models, follows the live
// feed and wires the add form, the row buttons and the inference pane to the GraphQL mutations.

import './style.css';
import CancelDownload from '@operations/CancelDownload.graphql';
import CreateModel from '@operations/CreateModel.graphql';
import DashboardInfo from '@operations/DashboardInfo.graphql';
import DashboardModel from '@operations/DashboardModel.graphql';
import DashboardModels from '@operations/DashboardModels.graphql';
import DeleteModel from '@operations/DeleteModel.graphql';
import GpuFit from '@operations/GpuFit.graphql';
import HuggingFaceModel from '@operations/HuggingFaceModel.graphql';
import RetryDownload from '@operations/RetryDownload.graphql';
import StartInference from '@operations/StartInference.graphql';
import StopInference from '@operations/StopInference.graphql';
import { $, fill } from './dom.js';
import { ApiError, coalesce, request, userError } from './graphql.js';
import { startLiveFeed } from './live.js';
import { createInferencePane } from './pane.js';
import { ModelStore } from './store.js';
import { addActivity, addNote, modelRow, renderConnection, renderFit, renderPreview } from './view.js';

const TOKEN_KEY = 'modelplane.token';
const PAGE_SIZE = 100;
const REPO_ID = /^[\w.-]+\/[\w.-]+$/;
const PREVIEW_DELAY_MS = 400;

const store = new ModelStore();
const page = {
  token: null,
  viewer: null,
  localRoots: [],
  feed: null,
  /** Events that arrive while the models are being (re)loaded, applied afterwards. */
  pending: null,
  rows: new Map(),
  /** model id → `{ text, kind, type }`: what the last Start or Stop of its inference said. */
  notes: new Map(),
};
const pane = createInferencePane({
  query: (operation, variables) => request(operation, variables, page.token),
  model: (id) => store.models.get(id),
  start: startInference,
  stop: stopInference,
  canEdit: () => handlers().canEdit,
  noteFor: (id) => page.notes.get(id),
});

// ---- token ------------------------------------------------------------------------------

/** `?token=` wins (and is removed from the address bar), then local storage. */
function readToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete('token');
    window.history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  return localStorage.getItem(TOKEN_KEY);
}

function showTokenPanel(show) {
  $('#token-panel').hidden = !show;
  if (show) $('#token-input').focus();
}

function wireTokenPanel() {
  $('#token-toggle').addEventListener('click', () => showTokenPanel($('#token-panel').hidden));
  $('#token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('#token-input').value.trim().replace(/^Bearer\s+/i, '');
    if (!value) return;
    localStorage.setItem(TOKEN_KEY, value);
    $('#token-input').value = '';
    showTokenPanel(false);
    start(value);
  });
  $('#token-forget').addEventListener('click', () => {
    localStorage.removeItem(TOKEN_KEY);
    stop();
    renderConnection($('#connection'), { state: 'idle', cursor: null });
    showTokenPanel(true);
  });
}

// ---- models -----------------------------------------------------------------------------

function handlers() {
  return {
    act: runAction,
    open: (model) => pane.open(model.id),
    noteFor: (id) => page.notes.get(id),
    canEdit: page.viewer !== null && page.viewer.role !== 'VIEWER',
  };
}

/** Draws the rows named in `ids` (all rows when omitted), keeping the table newest first. */
function renderModels(ids = null) {
  const body = $('#models');
  const models = store.sorted();
  const wanted = new Set(models.map((m) => m.id));
  for (const [id, row] of page.rows) {
    if (!wanted.has(id)) {
      row.remove();
      page.rows.delete(id);
    }
  }
  let previous = null;
  for (const model of models) {
    let row = page.rows.get(model.id);
    if (!row || ids === null || ids.has(model.id)) {
      const fresh = modelRow(model, handlers());
      if (row) row.replaceWith(fresh);
      row = fresh;
      page.rows.set(model.id, row);
    }
    const expectedPlace = previous ? previous.nextElementSibling : body.firstElementChild;
    if (expectedPlace !== row) {
      if (previous) previous.after(row);
      else body.prepend(row);
    }
    previous = row;
  }
  $('#model-count').textContent = models.length ? String(models.length) : '';
  $('#models-empty').hidden = models.length > 0;
}

/** Reads every model again, buffering live events until it is done. */
async function loadModels() {
  page.pending ??= [];
  try {
    const data = await request(DashboardModels, { limit: PAGE_SIZE }, page.token);
    store.replaceAll(data.models.items);
    renderModels();
  } catch (error) {
    flash(`Could not list models: ${error.message}`, 'error');
  } finally {
    const buffered = page.pending;
    page.pending = null;
    for (const event of buffered) handleEvent(event);
  }
}

/** Reads one model again; calls made while it is under way are answered by one more read. */
const refetchModel = coalesce(async (id) => {
  try {
    const data = await request(DashboardModel, { id }, page.token);
    if (data.model) store.upsert(data.model);
    else store.remove(id);
    renderModels(new Set([id]));
  } catch (error) {
    flash(`Could not read model ${id}: ${error.message}`, 'error');
  }
});

function handleEvent(event) {
  if (page.pending !== null) {
    page.pending.push(event);
    return;
  }
  const modelId = event.modelIds?.[0];
  addActivity($('#activity'), event, modelId ? store.models.get(modelId)?.name : null);
  const { changed, refetch, resync } = store.applyEvent(event);
  if (resync) {
    loadModels();
    return;
  }
  if (changed.size > 0) renderModels(changed);
  for (const id of refetch) refetchModel(id);
  if (event.type !== 'PROGRESS') {
    for (const id of new Set([...changed, ...refetch])) pane.changed(id);
  }
}

async function runAction(kind, model) {
  if (kind === 'start') return startInference(model, null);
  if (kind === 'stop') return stopInference(model);
  try {
    if (kind === 'cancel') {
      const data = await request(CancelDownload, { modelId: model.id }, page.token);
      reportOutcome(userError(data.cancelDownload, 'Weights'), `Cancelled the download of ${model.name}`);
    } else if (kind === 'retry') {
      const data = await request(RetryDownload, { modelId: model.id }, page.token);
      reportOutcome(userError(data.retryDownload, 'Weights'), `Retrying the download of ${model.name}`);
    } else if (kind === 'delete') {
      if (!window.confirm(`Delete ${model.name}? Its downloaded weights stay until no model uses them.`)) return;
      const data = await request(DeleteModel, { id: model.id }, page.token);
      const failure = userError(data.deleteModel, 'DeletedModel');
      if (!failure) {
        store.remove(model.id);
        renderModels(new Set());
      }
      reportOutcome(failure, `Deleted ${model.name}`);
    }
  } catch (error) {
    flash(error.message, 'error');
  }
  refetchModel(model.id);
}

// ---- inference ---------------------------------------------------------------------------

/** Remembers (or, with null, forgets) what Start or Stop said about a model, shown inline. */
function setNote(modelId, note) {
  if (note) page.notes.set(modelId, note);
  else page.notes.delete(modelId);
  renderModels(new Set([modelId]));
  pane.noteChanged(modelId);
}

/** A failed mutation's note: the union member's type and message. */
function failureNote(result, expected) {
  const failure = userError(result, expected);
  if (!failure) return null;
  const type = result?.__typename ?? 'Error';
  return { text: `${type}: ${failure}`, kind: 'error', type };
}

/** `startInference` with `input` (null: the defaults); the outcome shows in the row and pane. */
async function startInference(model, input) {
  try {
    const data = await request(StartInference, { modelId: model.id, input }, page.token);
    const result = data.startInference;
    const failure = failureNote(result, 'InferencePayload');
    if (failure) setNote(model.id, failure);
    else if (!result.started) setNote(model.id, { text: result.message ?? 'not started', kind: 'warn' });
    else {
      setNote(model.id, null);
      flash(`Starting ${model.name} (${result.inference.spec.engine ?? 'gateway route'})`);
    }
  } catch (error) {
    setNote(model.id, { text: error.message, kind: 'error' });
  }
  refetchModel(model.id);
  pane.changed(model.id);
}

async function stopInference(model) {
  try {
    const data = await request(StopInference, { modelId: model.id }, page.token);
    const failure = failureNote(data.stopInference, 'Inference');
    setNote(model.id, failure);
    if (!failure) flash(`Stopping ${model.name}`);
  } catch (error) {
    setNote(model.id, { text: error.message, kind: 'error' });
  }
  refetchModel(model.id);
  pane.changed(model.id);
}

function reportOutcome(failure, success) {
  flash(failure ?? success, failure ? 'error' : 'ok');
}

function flash(text, kind = 'ok') {
  const message = $('#add-message');
  message.textContent = text;
  message.dataset.kind = kind;
}

// ---- add form ---------------------------------------------------------------------------

function defaultLocalPath(repo) {
  const root = page.localRoots[0]; // the organisation's area under the first allowed root
  if (!root || !repo) return '';
  const name = repo.replace(/^https?:\/\/[^/]+\//, '').replace(/\/+$/, '');
  return `${root.replace(/\/+$/, '')}/${name}`;
}

function wireAddForm() {
  const repo = $('#repo');
  const revision = $('#revision');
  const localPath = $('#local-path');
  const preview = $('#preview');
  let sequence = 0;
  let timer = null;
  let previewed = '';

  async function showPreview() {
    const repoId = repo.value.trim();
    const rev = revision.value.trim() || null;
    const key = `${repoId}@${rev ?? ''}`;
    if (key === previewed) return;
    previewed = key;
    localPath.placeholder = defaultLocalPath(repoId) || '<allowed root>/<repo>';
    if (!repoId) {
      preview.hidden = true;
      return;
    }
    const mine = ++sequence;
    preview.hidden = false;
    preview.dataset.state = 'loading';
    fill(preview, 'Looking up ', repoId, ' on the hub…');
    try {
      const data = await request(HuggingFaceModel, { repoId, revision: rev }, page.token);
      if (mine !== sequence) return;
      const failure = userError(data.huggingFaceModel, 'HuggingFaceModel');
      if (failure) {
        preview.dataset.state = 'error';
        fill(preview, failure);
      } else {
        preview.dataset.state = 'ready';
        renderPreview(preview, data.huggingFaceModel);
        showFit(repoId, rev, mine);
      }
    } catch (error) {
      if (mine !== sequence) return;
      preview.dataset.state = 'error';
      fill(preview, error.message);
    }
  }

  // The GPU fit of the previewed repo for vLLM, against the cluster's GPUs (or a catalogue).
  async function showFit(repoId, rev, mine) {
    try {
      const data = await request(GpuFit, { repoId, revision: rev }, page.token);
      if (mine !== sequence) return;
      renderFit(preview, data.gpuFit);
    } catch (error) {
      if (mine !== sequence) return;
      renderFit(preview, { __typename: 'Error', errorMessage: error.message });
    }
  }

  repo.addEventListener('input', () => {
    clearTimeout(timer);
    localPath.placeholder = defaultLocalPath(repo.value.trim()) || '<allowed root>/<repo>';
    if (REPO_ID.test(repo.value.trim())) timer = setTimeout(showPreview, PREVIEW_DELAY_MS);
  });
  repo.addEventListener('blur', () => {
    clearTimeout(timer);
    showPreview();
  });
  revision.addEventListener('blur', showPreview);

  $('#add-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const repoId = repo.value.trim();
    const input = {
      source: { url: repoId, accessMode: 'LOCAL', revision: revision.value.trim() || null },
      downloadTarget: { local: { localPath: localPath.value.trim() || defaultLocalPath(repoId) } },
    };
    const submit = $('#add-submit');
    submit.disabled = true;
    try {
      const data = await request(CreateModel, { input }, page.token);
      const failure = userError(data.createModel, 'Model');
      if (failure) {
        flash(failure, 'error');
        return;
      }
      const model = data.createModel;
      store.upsert({ ...model, weights: store.models.get(model.id)?.weights ?? null });
      renderModels(new Set([model.id]));
      flash(`Added ${model.name}; downloading to ${model.downloadTarget?.localPath ?? 'its target'}`);
      $('#add-form').reset();
      localPath.placeholder = '<allowed root>/<repo>';
      preview.hidden = true;
      previewed = '';
      refetchModel(model.id);
    } catch (error) {
      flash(error.message, 'error');
    } finally {
      submit.disabled = !handlers().canEdit;
    }
  });
}

// ---- start-up ---------------------------------------------------------------------------

function stop() {
  page.feed?.stop();
  page.feed = null;
}

async function start(token) {
  stop();
  pane.close();
  page.notes.clear();
  page.token = token;
  page.pending = [];
  store.replaceAll([]);
  renderModels();
  try {
    const info = await request(DashboardInfo, {}, token);
    page.viewer = info.viewer;
    page.localRoots = info.serverInfo.localRoots ?? [];
    $('#server').textContent = `${info.serverInfo.version} · ${info.serverInfo.runtime} runtime`;
    $('#viewer').textContent = `${info.viewer.subject} · ${info.viewer.role.toLowerCase()} · ${info.viewer.organizationId}`;
    $('#add-submit').disabled = !handlers().canEdit;
  } catch (error) {
    const message = error instanceof ApiError ? error.message : String(error);
    const reason = /authentication/i.test(message) ? 'token rejected' : 'sign-in failed';
    renderConnection($('#connection'), { state: 'rejected', cursor: null, reason });
    flash(`Could not sign in: ${message}. Set a token.`, 'error');
    showTokenPanel(true);
    return;
  }
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  page.feed = startLiveFeed({
    url: `${scheme}//${window.location.host}/graphql`,
    token,
    onEvent: handleEvent,
    onStatus: (status) => {
      renderConnection($('#connection'), status);
      if (status.state === 'resumed') addNote($('#activity'), `reconnected: replaying after cursor ${status.cursor}`);
    },
    onFreshStart: loadModels,
  });
}

function main() {
  wireTokenPanel();
  wireAddForm();
  $('#refresh').addEventListener('click', () => loadModels());
  const token = readToken();
  if (token) start(token);
  else {
    flash('Set a bearer token to begin (the dev server prints one at start-up).', 'error');
    showTokenPanel(true);
  }
}

main();
