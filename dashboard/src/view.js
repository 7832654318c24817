// Drawing: table rows, the download and inference cells, the connection indicator, the hub
// preview, the inference pane's parts and the activity list. Functions here only build DOM from
// data; the pages decide when to call them.

import { fill, h } from './dom.js';
import { bytes, clock, duration, elapsed, parameters, percent, rate } from './format.js';
import { ACTIVE_DOWNLOAD } from './store.js';

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

/** What each access mode means, under the source. */
const SOURCE_KINDS = {
  LOCAL: 'Hugging Face · local weights',
  REMOTE_API: 'remote API',
  ENGINE: 'fetched by its engine',
};

function sourceCell(model) {
  const source = model.source;
  return h(
    'td.source',
    {},
    h('span.mono', {}, source.url),
    source.revision ? h('span.chip', { title: 'revision' }, source.revision) : null,
    h('div.sub', {}, SOURCE_KINDS[source.accessMode] || source.accessMode),
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

/** Why a model cannot be started now, or null when it can. */
export function cannotStart(model) {
  if (model.inference?.enabled) return 'already serving: stop it first';
  if (model.source?.accessMode === 'LOCAL' && model.phase !== 'READY') return 'the weights are not downloaded yet';
  return null;
}

/** The inference cell: phase badge, reason and replicas under it, a link to the model's page, a note. */
function inferenceCell(model, { noteFor }) {
  const inference = model.inference;
  const note = noteFor(model.id);
  const up = inference && inference.phase !== 'STOPPED';
  return h(
    'td.inference',
    {},
    inference ? phaseBadge(inference.phase, inference.message ?? inference.reason) : h('span.muted.none', {}, '—'),
    inference?.reason ? h('div.sub.reason', { title: inference.message ?? '' }, inference.reason) : null,
    up ? h('div.sub', {}, `${inference.readyReplicas}/${inference.replicas} ready`) : null,
    h('a.link', { href: `#/models/${encodeURIComponent(model.id)}`, dataset: { action: 'inference' } }, 'details'),
    note ? h(`div.sub.note.${note.kind}`, { dataset: { errorType: note.type ?? '' } }, note.text) : null,
  );
}

/** The action buttons; `act(kind, model)` runs one. `canEdit` is false for viewers. */
function actionsCell(model, { act, canEdit }) {
  const state = model.weights?.state;
  const downloading = ACTIVE_DOWNLOAD.has(state);
  const retryable = state === 'FAILED' || state === 'CANCELLED' || (model.phase === 'FAILED' && !downloading);
  const button = (kind, label, enabled, why = null) =>
    h(
      `button.small${kind === 'delete' ? '.danger' : ''}`,
      {
        type: 'button',
        dataset: { action: kind },
        disabled: !enabled || !canEdit,
        title: canEdit ? why : 'needs the editor role',
        onclick: () => act(kind, model),
      },
      label,
    );
  const startBlocker = cannotStart(model);
  const serving = model.inference?.enabled === true;
  return h(
    'td.actions',
    {},
    button('start', 'Start', startBlocker === null, startBlocker ?? 'serve it with the defaults; options in details'),
    button('stop', 'Stop', serving, serving ? null : 'nothing is serving it'),
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
    {
      dataset: {
        modelId: model.id,
        name: model.name,
        phase: model.phase,
        inferencePhase: model.inference?.phase ?? '',
      },
    },
    h(
      'td.name',
      {},
      h('a.title', { href: `#/models/${encodeURIComponent(model.id)}` }, model.displayName),
      h('div.sub.mono', {}, model.name),
      model.phase === 'FAILED' && model.message ? h('div.sub.error', {}, model.message) : null,
    ),
    sourceCell(model),
    h('td.phase', {}, phaseBadge(model.phase, model.message)),
    inferenceCell(model, handlers),
    h('td.num', {}, bytes(size)),
    downloadCell(model),
    actionsCell(model, handlers),
  );
}

/** The pane's facts about an inference: where it answers, what it runs. */
export function renderInferenceSummary(element, model, inference) {
  if (!inference) {
    fill(
      element,
      h('p.muted', {}, `${model.name} has no inference yet: start one below (empty fields keep the defaults).`),
    );
    return;
  }
  const spec = inference.spec;
  const facts = [
    ['phase', phaseBadge(inference.phase, inference.message)],
    ['endpoint', inference.endpoint ? h('span.mono', {}, inference.endpoint) : '—'],
    ['replicas', `${inference.readyReplicas} ready / ${inference.replicas} wanted`],
    ['engine', spec.engine ?? 'gateway route'],
    ['image', spec.image ?? 'engine default'],
    ['engine flags', spec.engineArgs?.length ? h('span.mono', {}, spec.engineArgs.join(' ')) : 'none'],
    ['GPUs', spec.gpuType ? `${spec.gpu} × ${spec.gpuType}` : String(spec.gpu)],
    ['cpu', spec.cpu],
    ['memory', spec.memory],
    ['port', String(spec.port)],
    ['served as', h('span.mono', {}, inference.modelName)],
    ['id', h('span.mono', {}, inference.id)],
    ['runtime', inference.runtime],
  ];
  fill(
    element,
    inference.reason || inference.message
      ? h(
          `p.why${inference.phase === 'FAILED' || inference.phase === 'CRASH_LOOP_BACK_OFF' ? '.error' : ''}`,
          {},
          inference.reason ? h('strong', {}, inference.reason) : null,
          inference.reason && inference.message ? ': ' : null,
          inference.message,
        )
      : null,
    h(
      'dl.facts',
      {},
      facts.map(([term, value]) => h('div', { dataset: { fact: term } }, h('dt', {}, term), h('dd', {}, value))),
    ),
  );
}

/** The phase timeline, oldest first: when each phase began and how long it lasted. */
export function renderTimeline(list, inference) {
  const history = inference?.phaseHistory ?? [];
  fill(
    list,
    history.map((entry, index) => {
      const next = history[index + 1];
      let spent = null;
      if (next) spent = elapsed(entry.enteredAt, next.enteredAt);
      else if (entry.phase !== 'STOPPED') spent = `${elapsed(entry.enteredAt)} so far`;
      return h(
        'li',
        { dataset: { phase: entry.phase } },
        h('span.time.mono', { title: entry.enteredAt }, clock(entry.enteredAt)),
        phaseBadge(entry.phase, entry.message),
        spent ? h('span.spent.muted', {}, spent) : null,
        entry.reason ? h('span.chip', {}, entry.reason) : null,
        entry.message ? h('div.sub', {}, entry.message) : null,
      );
    }),
  );
  if (history.length === 0) list.append(h('li.muted', {}, 'no phases yet'));
}

/** The engine's last lines; stays scrolled to the end unless the reader scrolled up. */
export function renderLogs(pre, lines) {
  const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
  pre.textContent = lines.length ? lines.join('\n') : '(no lines yet)';
  pre.dataset.lines = String(lines.length);
  if (atEnd) pre.scrollTop = pre.scrollHeight;
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

/** Appends the GPU fit (a `GpuFit` or a user error) to the hub preview. */
export function renderFit(element, fit) {
  element.querySelector('.preview-fit')?.remove();
  const line =
    fit.__typename === 'GpuFit'
      ? h(
          'p.preview-fit',
          { dataset: { fits: String(fit.fits) }, title: (fit.notes ?? []).join('\n') },
          h('strong', {}, 'GPU fit (vLLM): '),
          fit.summary,
        )
      : h('p.preview-fit.muted', { dataset: { fits: 'unknown' } }, 'GPU fit: ', fit.errorMessage ?? fit.__typename);
  element.append(line);
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
