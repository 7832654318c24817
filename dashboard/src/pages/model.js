// One model's page (`#/models/<id>`): its facts; its weights with per-file progress (the
// `downloadProgress` subscription); its inference (summary, endpoint, the start form with
// engine, replicas and resources, and a dry run that shows what would be created); the phase
// timeline across model, weights and inference (`modelTimeline`); the engine's last log lines;
// Cancel, Retry, Stop and Delete (after a confirmation).
//
// Live: ModelEvents for this model and InferenceEvents (filtered to this model) re-read the
// model, its inference and its timeline (one read at a time, `coalesce`); downloadProgress
// draws each file's bar. While the inference is up its logs and summary are read every
// AUTO_REFRESH_MS as well. Once a stop completes the model has no inference any more; the page
// keeps showing how the last one ended, read by its id (`Inference`).

import './core.css';
import DashboardModel from '@operations/DashboardModel.graphql';
import DownloadProgress from '@operations/DownloadProgress.graphql';
import Inference from '@operations/Inference.graphql';
import InferenceEvents from '@operations/InferenceEvents.graphql';
import InferenceLogs from '@operations/InferenceLogs.graphql';
import ModelEvents from '@operations/ModelEvents.graphql';
import ModelInference from '@operations/ModelInference.graphql';
import ModelTimeline from '@operations/ModelTimeline.graphql';
import { modelActions } from '../actions.js';
import { fill, h } from '../dom.js';
import { clearErrors, formMessage, showError } from '../forms.js';
import { coalesce } from '../graphql.js';
import { ACTIVE_DOWNLOAD } from '../store.js';
import { cannotStart, renderInferenceSummary, renderLogs, renderTimeline } from '../view.js';
import { renderDryRun, renderModelFacts, renderModelTimeline, renderWeights } from './model-view.js';

const AUTO_REFRESH_MS = 3000;
const LOG_TAIL = 200;
const ENGINES = [
  ['', 'default'],
  ['VLLM', 'vLLM'],
  ['OLLAMA', 'Ollama'],
  ['LITELLM_PROXY', 'LiteLLM proxy'],
  ['CUSTOM', 'custom'],
];

function field(id, label, props) {
  return h('div.field', {}, h('label', { for: id }, label), h(props.tag ?? 'input', { id, name: id, ...props, tag: null }));
}

function startForm() {
  return h(
    'form#start-form.add-form.start-form',
    { autocomplete: 'off', novalidate: true },
    h(
      'div.field',
      {},
      h('label', { for: 'start-engine' }, 'Engine'),
      h('select#start-engine', { name: 'engine', dataset: { field: 'input.engine engine' } }, ENGINES.map(([v, t]) => h('option', { value: v }, t))),
    ),
    field('start-replicas', 'Replicas', { type: 'number', inputmode: 'numeric', placeholder: '1', dataset: { field: 'input.replicas replicas' } }),
    field('start-gpu', 'GPUs', { type: 'number', inputmode: 'numeric', placeholder: 'default', dataset: { field: 'input.resources.gpu input.gpuType input.resources' } }),
    field('start-cpu', 'CPU', { placeholder: 'default', dataset: { field: 'input.resources.cpu' } }),
    field('start-memory', 'Memory', { placeholder: 'default', dataset: { field: 'input.resources.memory' } }),
    h(
      'div.field.submit',
      {},
      h('div.form-actions', {}, h('button#start-dry-run.ghost', { type: 'button' }, 'Preview (dry run)'), h('button#start-submit', { type: 'submit' }, 'Start inference')),
    ),
    h('p#start-message.message.wide', { dataset: { formMessage: '' }, role: 'alert' }),
  );
}

/** The start form's choices as an `InferenceInput`; null when everything is left to defaults. */
function formInput(form) {
  const text = (id) => form.querySelector(`#${id}`).value.trim();
  const input = {};
  const resources = {};
  if (text('start-engine')) input.engine = text('start-engine');
  if (text('start-replicas') !== '') input.replicas = Number(text('start-replicas'));
  if (text('start-gpu') !== '') resources.gpu = Number(text('start-gpu'));
  if (text('start-cpu')) resources.cpu = text('start-cpu');
  if (text('start-memory')) resources.memory = text('start-memory');
  if (Object.keys(resources).length) input.resources = resources;
  return Object.keys(input).length > 0 ? input : null;
}

export function mount(root, ctx) {
  const id = ctx.route.id;
  const actions = modelActions(ctx);
  let alive = true;
  let model = null;
  let inference = null;
  let weights = null;
  let timer = null;
  let progressOff = null;

  const title = h('span.count', { id: 'model-title' });
  const buttons = {
    cancel: h('button.small', { type: 'button', dataset: { action: 'cancel' } }, 'Cancel download'),
    retry: h('button.small', { type: 'button', dataset: { action: 'retry' } }, 'Retry download'),
    stop: h('button.small', { type: 'button', dataset: { action: 'stop' } }, 'Stop inference'),
    delete: h('button.small.danger', { type: 'button', dataset: { action: 'delete' } }, 'Delete model'),
  };
  const message = h('p#model-message.message', { role: 'alert' });
  const factsBox = h('div#model-facts');
  const weightsBox = h('div#model-weights');
  const summary = h('div#pane-summary');
  const form = startForm();
  const dryRun = h('div#dry-run.preview', { hidden: true, 'aria-live': 'polite' });
  const inferenceTimeline = h('ol#pane-timeline.timeline');
  const modelTimeline = h('ol#model-timeline.timeline');
  const logs = h('pre#pane-logs.logs', { tabindex: '0', 'aria-label': 'engine logs' });
  const page = h(
    'div#model-page.detail',
    { dataset: { modelId: id } },
    h(
      'section.card',
      {},
      h(
        'div.card-head',
        {},
        h('h2', { tabindex: '-1' }, h('a', { href: '#/models' }, 'Models'), ' / ', title),
        h('div.danger-zone', {}, Object.values(buttons)),
      ),
      message,
      factsBox,
    ),
    h(
      'div.detail-grid',
      {},
      h('section.card', {}, h('h2', {}, 'Weights'), weightsBox),
      h('section.card', {}, h('h2', {}, 'Timeline'), modelTimeline),
    ),
    h(
      'section.card.pane#inference-pane',
      {},
      h('h2', {}, 'Inference ', h('span#pane-auto.count')),
      summary,
      form,
      dryRun,
      h(
        'div.pane-grid',
        {},
        h('div', {}, h('h3', {}, 'Inference phases'), inferenceTimeline),
        h('div', {}, h('h3', {}, 'Logs ', h('span.muted', {}, `(last ${LOG_TAIL} lines)`)), logs),
      ),
    ),
  );
  root.append(page);

  // ---- drawing ------------------------------------------------------------------------------

  function note(text, kind = 'ok') {
    message.textContent = text ?? '';
    message.dataset.kind = kind;
  }

  function render() {
    if (!model) return;
    fill(title, model.displayName ?? model.name);
    page.dataset.phase = model.phase;
    page.dataset.inferencePhase = inference?.phase ?? ''; // the last one shown, also once stopped
    renderModelFacts(factsBox, model);
    renderWeights(weightsBox, model, weights);
    const state = weights?.state;
    const downloading = ACTIVE_DOWNLOAD.has(state);
    const serving = model.inference?.enabled === true;
    const edit = (button, enabled, why) => {
      button.disabled = !enabled || !ctx.canEdit;
      button.title = ctx.canEdit ? (enabled ? '' : why) : 'needs the editor role';
    };
    edit(buttons.cancel, downloading, 'no download under way');
    edit(buttons.retry, state === 'FAILED' || state === 'CANCELLED' || (model.phase === 'FAILED' && !downloading), 'nothing to retry');
    edit(buttons.stop, serving, 'nothing is serving it');
    edit(buttons.delete, true, '');
    renderInferenceSummary(summary, model, inference);
    renderTimeline(inferenceTimeline, inference);
    form.hidden = serving;
    const blocker = cannotStart(model);
    for (const button of [form.querySelector('#start-submit'), form.querySelector('#start-dry-run')]) {
      button.disabled = blocker !== null || !ctx.canEdit;
      button.title = ctx.canEdit ? (blocker ?? '') : 'needs the editor role';
    }
    const live = inference && inference.phase !== 'STOPPED';
    fill(page.querySelector('#pane-auto'), live ? `refreshed every ${AUTO_REFRESH_MS / 1000} s` : '');
  }

  // ---- reading ------------------------------------------------------------------------------

  const load = coalesce(async () => {
    try {
      const [modelData, inferenceData, timelineData] = await Promise.all([
        ctx.request(DashboardModel, { id }),
        ctx.request(ModelInference, { id }),
        ctx.request(ModelTimeline, { modelId: id }),
      ]);
      if (!alive) return;
      if (!modelData.model || modelData.model.isDeleted) {
        fill(page, h('section.card', {}, h('h2', { tabindex: '-1' }, 'Model not found'), h('p.muted', {}, `No model ${id} in your organisation. `, h('a', { href: '#/models' }, 'Back to the models'))));
        stopAll();
        return;
      }
      const previous = inference;
      model = modelData.model;
      inference = inferenceData.model?.inference ?? null;
      if (!weights || weights.id !== model.weights?.id || !ACTIVE_DOWNLOAD.has(model.weights?.state)) weights = model.weights;
      if (!inference && previous?.id) {
        const last = await ctx.request(Inference, { id: previous.id }).catch(() => null);
        if (!alive) return;
        if (last?.inference) inference = last.inference;
      }
      renderModelTimeline(modelTimeline, Array.isArray(timelineData.modelTimeline) ? timelineData.modelTimeline : []);
      render();
      followDownload();
      if (inference) {
        const tail = await ctx.request(InferenceLogs, { id: inference.id, tail: LOG_TAIL }).catch((error) => ({ inferenceLogs: { lines: [`could not read the logs: ${error.message}`] } }));
        if (alive) renderLogs(logs, tail.inferenceLogs?.lines ?? []);
      } else {
        renderLogs(logs, []);
      }
    } catch (error) {
      if (alive) note(`Could not read the model: ${error.message}`, 'error');
    }
  });

  /** Subscribes to downloadProgress while the weights are being downloaded. */
  function followDownload() {
    const active = model?.source.accessMode === 'LOCAL' && ACTIVE_DOWNLOAD.has(model.weights?.state ?? 'PENDING') && model.phase !== 'READY';
    if (!active || progressOff) return;
    progressOff = ctx.subscribe(DownloadProgress, { modelId: id }, {
      next: (value) => {
        if (!alive || !value) return;
        weights = value;
        render();
      },
      complete: () => {
        progressOff = null;
        load(); // finished, failed or cancelled: read the outcome
      },
      error: () => {
        progressOff = null;
      },
    });
  }

  function onEvent(event) {
    if (!alive || !event || event.type === 'PROGRESS' || event.type === 'OVERFLOW') return;
    if (event.type === 'RESYNC_REQUIRED' || event.resourceId === id || (event.modelIds ?? []).includes(id)) load();
  }

  // ---- acting -------------------------------------------------------------------------------

  async function act(kind) {
    const target = model;
    if (!target) return;
    const outcome = kind === 'delete' ? await actions.remove(target) : await actions[kind](target);
    if (!alive || outcome === null) return;
    if (outcome.error) {
      note(`${outcome.error.type}: ${outcome.error.message}`, 'error');
      return;
    }
    if (kind === 'delete') {
      ctx.flash(`Deleted ${target.name}`);
      ctx.navigate('#/models');
      return;
    }
    const done = { cancel: 'Cancelled the download', retry: 'Retrying the download', stop: 'Stopping the inference' };
    note(done[kind]);
    if (kind === 'retry') {
      weights = null;
      progressOff?.();
      progressOff = null;
    }
    load();
  }
  for (const [kind, button] of Object.entries(buttons)) button.addEventListener('click', () => act(kind));

  async function start(dry) {
    if (!model) return;
    clearErrors(form);
    dryRun.hidden = true;
    const outcome = await actions.start(model, formInput(form), dry);
    if (!alive) return;
    if (outcome.error) {
      showError(form, outcome.error);
      return;
    }
    if (dry) {
      renderDryRun(dryRun, outcome.result);
      return;
    }
    if (outcome.note) formMessage(form, outcome.note.text, outcome.note.kind);
    else note(`Starting ${model.name} (${outcome.result.inference.spec.engine ?? 'gateway route'})`);
    load();
  }
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    start(false);
  });
  form.querySelector('#start-dry-run').addEventListener('click', () => start(true));

  // ---- live ---------------------------------------------------------------------------------

  const offModel = ctx.subscribe(ModelEvents, { modelId: id }, { next: onEvent, fresh: () => load() });
  const offInference = ctx.subscribe(InferenceEvents, {}, { next: onEvent });
  timer = setInterval(() => {
    if (inference && inference.phase !== 'STOPPED') load();
  }, AUTO_REFRESH_MS);
  load();

  function stopAll() {
    clearInterval(timer);
    progressOff?.();
    offModel();
    offInference();
  }

  return () => {
    alive = false;
    stopAll();
  };
}
