// Drawing: table rows, the download cell, the connection indicator, the hub preview and the
// activity list. Functions here only build DOM from data; main.js decides when to call them.

import { fill, h } from './dom.js';
import { bytes, clock, duration, parameters, percent, rate } from './format.js';
import { ACTIVE_DOWNLOAD } from './store.js';

export const INFERENCE_UNAVAILABLE = 'inference: not available yet';

const CONNECTION_LABELS = {
  idle: () => 'not connected',
  connecting: () => 'connecting…',
  live: () => 'live',
  resumed: (status) => `resumed after cursor ${status.cursor}`,
  reconnecting: () => 'reconnecting…',
  rejected: (status) => status.reason ?? 'rejected',
};

/** Shows the feed's state in the header indicator. */
export function renderConnection(element, status) {
  element.dataset.state = status.state;
  const label = (CONNECTION_LABELS[status.state] ?? (() => status.state))(status);
  element.querySelector('.label').textContent = label;
  element.title =
    status.cursor === null || status.cursor === undefined ? label : `${label} (last cursor ${status.cursor})`;
}

function phaseBadge(phase, message) {
  const value = phase ?? 'UNKNOWN';
  return h(`span.badge.phase-${value.toLowerCase()}`, { title: message ?? value }, value);
}

function sourceCell(model) {
  const source = model.source;
  return h(
    'td.source',
    {},
    h('span.mono', {}, source.url),
    source.revision ? h('span.chip', { title: 'revision' }, source.revision) : null,
    h('div.sub', {}, source.accessMode === 'LOCAL' ? 'Hugging Face · local weights' : 'remote API'),
  );
}

/** The download cell: a live bar while pulling, the outcome afterwards. */
export function downloadCell(model) {
  const weights = model.weights;
  if (!weights) {
    return h('td.download', {}, h('span.muted', {}, model.source.accessMode === 'LOCAL' ? 'waiting…' : '—'));
  }
  const progress = weights.progress;
  if (ACTIVE_DOWNLOAD.has(weights.state)) {
    const done = progress?.bytesDone ?? 0;
    const total = progress?.bytesTotal ?? weights.sizeBytes ?? model.hub?.weightBytes ?? 0;
    const pct = percent(done, total);
    const details = progress
      ? [
          `${bytes(done)} / ${bytes(total)}`,
          progress.bytesPerSecond ? rate(progress.bytesPerSecond) : null,
          progress.etaSeconds !== null && progress.etaSeconds !== undefined ? `ETA ${duration(progress.etaSeconds)}` : null,
        ].filter(Boolean)
      : [weights.state === 'PENDING' ? 'queued' : 'starting…'];
    return h(
      'td.download',
      {},
      h(
        'div.meter',
        {
          role: 'progressbar',
          'aria-valuemin': 0,
          'aria-valuemax': total,
          'aria-valuenow': done,
          dataset: { bytesDone: String(done), bytesTotal: String(total) },
        },
        h('div.meter-fill', { style: { width: `${pct}%` } }),
        h('span.meter-label', {}, `${pct.toFixed(pct % 1 ? 1 : 0)}%`),
      ),
      h('div.sub', {}, details.join(' · ')),
      progress?.currentFile ? h('div.sub.mono.file', { title: progress.currentFile }, progress.currentFile) : null,
    );
  }
  if (weights.state === 'READY') {
    return h('td.download', {}, h('span.ok', {}, '✓ downloaded'), h('div.sub', {}, bytes(weights.sizeBytes)));
  }
  if (weights.state === 'CANCELLED') return h('td.download', {}, h('span.muted', {}, 'cancelled'));
  return h('td.download', {}, h('span.error', { title: weights.message ?? '' }, weights.message ?? weights.state));
}

/** The action buttons; `act(kind, model)` runs one. `canEdit` is false for viewers. */
function actionsCell(model, { act, canEdit }) {
  const state = model.weights?.state;
  const downloading = ACTIVE_DOWNLOAD.has(state);
  const retryable = state === 'FAILED' || state === 'CANCELLED' || (model.phase === 'FAILED' && !downloading);
  const editTitle = canEdit ? null : 'needs the editor role';
  const button = (kind, label, enabled, extra = {}) =>
    h(
      `button.small${kind === 'delete' ? '.danger' : ''}`,
      {
        type: 'button',
        dataset: { action: kind },
        disabled: !enabled || !canEdit,
        title: extra.title ?? editTitle,
        onclick: () => act(kind, model),
      },
      label,
    );
  return h(
    'td.actions',
    {},
    h(
      'button.small',
      { type: 'button', disabled: true, title: INFERENCE_UNAVAILABLE, dataset: { action: 'start' } },
      'Start',
    ),
    h(
      'button.small',
      { type: 'button', disabled: true, title: INFERENCE_UNAVAILABLE, dataset: { action: 'stop' } },
      'Stop',
    ),
    button('cancel', 'Cancel', downloading),
    button('retry', 'Retry', retryable),
    button('delete', 'Delete', true),
  );
}

/** One table row for `model`. */
export function modelRow(model, handlers) {
  const size = model.weights?.sizeBytes ?? model.hub?.weightBytes ?? null;
  return h(
    'tr',
    { dataset: { modelId: model.id, name: model.name, phase: model.phase } },
    h(
      'td.name',
      {},
      h('div.title', {}, model.displayName),
      h('div.sub.mono', {}, model.name),
      model.phase === 'FAILED' && model.message ? h('div.sub.error', {}, model.message) : null,
    ),
    sourceCell(model),
    h('td.phase', {}, phaseBadge(model.phase, model.message)),
    h('td.inference', { title: INFERENCE_UNAVAILABLE }, h('span.muted', {}, model.inferencePhase ?? '—')),
    h('td.num', {}, bytes(size)),
    downloadCell(model),
    actionsCell(model, handlers),
  );
}

/** The hub metadata card shown under the add form. */
export function renderPreview(element, info) {
  const facts = [
    ['size', bytes(info.weightBytes)],
    ['parameters', parameters(info.parameters)],
    ['architecture', info.architecture ?? '—'],
    ['license', info.license ?? '—'],
    ['task', info.pipelineTag ?? '—'],
    ['library', info.libraryName ?? '—'],
    ['files', String(info.files?.length ?? 0)],
    ['commit', info.sha ? info.sha.slice(0, 10) : '—'],
  ];
  fill(
    element,
    h(
      'div.preview-head',
      {},
      h('strong', {}, info.displayName ?? info.repoId),
      h('span.mono.muted', {}, info.repoId),
      info.gated ? h('span.badge.phase-pending', { title: 'access must be granted on the hub' }, 'gated') : null,
      info.private ? h('span.badge.phase-pending', {}, 'private') : null,
    ),
    info.description ? h('p.muted', {}, info.description) : null,
    h(
      'dl.facts',
      {},
      facts.map(([term, value]) => h('div', { dataset: { fact: term } }, h('dt', {}, term), h('dd', {}, value))),
    ),
  );
  element.hidden = false;
}

/** Prepends one line to the activity list, keeping the latest `keep`. */
export function addActivity(list, event, modelName, keep = 12) {
  const what =
    event.resourceKind === null || event.resourceKind === undefined
      ? event.type.replace('_', ' ').toLowerCase()
      : `${event.resourceKind.toLowerCase()} ${event.type.replace('_', ' ').toLowerCase()}`;
  const item = h(
    'li',
    {},
    h('span.time.mono', {}, clock(event.at) || '—'),
    h('span.cursor.mono', { title: 'cursor' }, `#${event.cursor}`),
    h('span.what', {}, what),
    event.phase ? phaseBadge(event.phase, event.message) : null,
    modelName ? h('span.mono', {}, modelName) : null,
    event.type === 'PROGRESS' && event.progress
      ? h('span.muted', {}, `${bytes(event.progress.bytesDone)} / ${bytes(event.progress.bytesTotal)}`)
      : null,
  );
  list.prepend(item);
  while (list.children.length > keep) list.lastElementChild.remove();
}

/** Prepends a line about the connection itself (not an event) to the activity list. */
export function addNote(list, text, keep = 12) {
  list.prepend(h('li.note', {}, h('span.time.mono', {}, clock(new Date().toISOString())), h('span.muted', {}, text)));
  while (list.children.length > keep) list.lastElementChild.remove();
}
