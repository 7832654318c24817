// Drawing for one model's page: the facts about the model, the weights with per-file progress,
// the dry run's preview and the phase timeline across model, weights and inference. Functions
// here only build DOM from data; pages/model.js decides when to call them.

import { fill, h } from '../dom.js';
import { bytes, clock, duration, percent, rate } from '../format.js';
import { ACTIVE_DOWNLOAD } from '../store.js';

function badge(phase, title = null) {
  const value = phase ?? 'UNKNOWN';
  return h(`span.badge.phase-${value.toLowerCase()}`, { title: title ?? value }, value);
}

function facts(list) {
  return h(
    'dl.facts',
    {},
    list
      .filter(([, value]) => value !== null && value !== undefined && value !== '')
      .map(([term, value]) => h('div', { dataset: { fact: term } }, h('dt', {}, term), h('dd', {}, value))),
  );
}

function targetText(target) {
  if (!target) return null;
  if (target.__typename === 'LocalTarget') return h('span.mono', {}, target.localPath);
  if (target.__typename === 'PvcTarget') {
    return h('span.mono', {}, `pvc ${target.claimName}${target.subPath ? `/${target.subPath}` : ''}`);
  }
  return h('span.mono', {}, `s3 ${target.bucket ?? '(default bucket)'}/${target.prefix ?? ''}`);
}

/** The model's own facts. */
export function renderModelFacts(element, model) {
  const resources = model.resources;
  fill(
    element,
    model.description ? h('p.muted', {}, model.description) : null,
    model.phase === 'FAILED' && model.message ? h('p.error', {}, model.message) : null,
    facts([
      ['phase', badge(model.phase, model.message)],
      ['name', h('span.mono', {}, model.name)],
      ['source', h('span.mono', {}, model.source.url)],
      ['access', model.source.accessMode],
      ['revision', model.source.revision],
      ['key or token', model.source.hasToken ? 'stored (never shown)' : 'none'],
      ['target', targetText(model.downloadTarget)],
      ['resources', resources ? [resources.cpu && `cpu ${resources.cpu}`, resources.memory, resources.gpu ? `${resources.gpu} GPU` : null].filter(Boolean).join(' · ') : null],
      ['tags', (model.tags ?? []).length ? model.tags.map((t) => h('span.chip', {}, t)) : null],
      ['parameters', model.hub?.parameters ? Number(model.hub.parameters).toLocaleString('en') : null],
      ['size', model.hub?.weightBytes ? bytes(model.hub.weightBytes) : null],
      ['created', clock(model.createdAt)],
      ['id', h('span.mono', {}, model.id)],
    ]),
  );
}

function meter(done, total, label = null) {
  const pct = percent(done, total);
  return h(
    'div.meter',
    {
      role: 'progressbar',
      'aria-valuemin': 0,
      'aria-valuemax': total,
      'aria-valuenow': done,
      'aria-label': label,
      dataset: { bytesDone: String(done), bytesTotal: String(total) },
    },
    h('div.meter-fill', { style: { width: `${pct}%` } }),
    h('span.meter-label', {}, `${pct.toFixed(pct % 1 ? 1 : 0)}%`),
  );
}

/** The weights: state, overall progress, and one row per file (from downloadProgress). */
export function renderWeights(element, model, weights) {
  if (model.source.accessMode !== 'LOCAL') {
    fill(element, h('p.muted', {}, 'Nothing to download: ', model.source.accessMode === 'REMOTE_API' ? 'a remote API.' : 'its engine fetches it.'));
    return;
  }
  if (!weights) {
    fill(element, h('p.muted', {}, 'waiting for the download to be planned…'));
    return;
  }
  const progress = weights.progress;
  const active = ACTIVE_DOWNLOAD.has(weights.state);
  const total = progress?.bytesTotal ?? weights.sizeBytes ?? 0;
  const done = weights.state === 'READY' ? total : (progress?.bytesDone ?? 0);
  const progressFiles = new Map((progress?.files ?? []).map((f) => [f.path, f]));
  const files = (weights.files?.length ? weights.files : progress?.files ?? []).map((file) => {
    const live = progressFiles.get(file.path);
    const size = Number(live?.bytesTotal ?? file.size ?? file.bytesTotal ?? 0);
    const fileDone = weights.state === 'READY' ? size : Number(live?.bytesDone ?? 0);
    const state = weights.state === 'READY' ? 'DONE' : (live?.state ?? 'PENDING');
    return { path: file.path, size, done: fileDone, state };
  });
  for (const [path, live] of progressFiles) {
    if (!files.some((f) => f.path === path)) {
      files.push({ path, size: Number(live.bytesTotal ?? 0), done: Number(live.bytesDone ?? 0), state: live.state });
    }
  }
  fill(
    element,
    h(
      'div.weights-head',
      { dataset: { state: weights.state } },
      badge(weights.state, weights.message),
      ' ',
      h('span', {}, `${bytes(done)} / ${bytes(total)}`),
      active && progress?.bytesPerSecond ? h('span.muted', {}, ` · ${rate(progress.bytesPerSecond)}`) : null,
      active && progress?.etaSeconds !== null && progress?.etaSeconds !== undefined
        ? h('span.muted', {}, ` · ETA ${duration(progress.etaSeconds)}`)
        : null,
    ),
    weights.message && weights.state !== 'READY' ? h('p.error', {}, weights.message) : null,
    meter(done, total, 'all files'),
    h('p.sub.mono', {}, weights.location ?? ''),
    files.length
      ? h(
          'table.files#weights-files',
          {},
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'File'), h('th', { scope: 'col' }, 'Size'), h('th', { scope: 'col' }, 'Progress'))),
          h(
            'tbody',
            {},
            files.map((file) =>
              h(
                'tr',
                { dataset: { path: file.path, state: file.state } },
                h('td.mono', {}, file.path),
                h('td', {}, bytes(file.size)),
                h('td.bar', {}, meter(file.done, file.size, file.path)),
              ),
            ),
          ),
        )
      : null,
  );
}

/** The dry run's answer: what would be created, the GPU fit, the objects. */
export function renderDryRun(element, payload) {
  const spec = payload.inference.spec;
  fill(
    element,
    h('h3', {}, 'Dry run: what would be created'),
    payload.message ? h('p.muted', {}, payload.message) : null,
    facts([
      ['engine', spec.engine ?? 'gateway route'],
      ['image', spec.image ? h('span.mono', {}, spec.image) : null],
      ['replicas', String(spec.replicas)],
      ['GPUs', spec.gpuType ? `${spec.gpu} × ${spec.gpuType}` : String(spec.gpu)],
      ['cpu', spec.cpu],
      ['memory', spec.memory],
      ['port', String(spec.port)],
      ['served as', h('span.mono', {}, payload.inference.modelName)],
    ]),
    payload.fit ? h('p.preview-fit', { dataset: { fits: String(payload.fit.fits) } }, h('strong', {}, 'GPU fit: '), payload.fit.summary) : null,
    payload.manifests.length
      ? h('pre.manifests#dry-run-manifests', {}, payload.manifests.join('\n---\n'))
      : h('p.muted', {}, 'No objects: the local runtime starts a supervised process.'),
  );
  element.hidden = false;
}

const TIMELINE_PHASE = (entry) => entry.modelPhase ?? entry.weightsState ?? entry.inferencePhase;

/** The model's phase timeline (modelTimeline), oldest first. */
export function renderModelTimeline(list, entries) {
  fill(
    list,
    entries.map((entry) =>
      h(
        'li',
        { dataset: { phase: TIMELINE_PHASE(entry), kind: entry.resourceKind } },
        h('span.time.mono', { title: entry.at }, clock(entry.at)),
        h('span.chip', {}, entry.resourceKind.toLowerCase()),
        badge(TIMELINE_PHASE(entry)),
        entry.durationSeconds !== null && entry.durationSeconds !== undefined
          ? h('span.spent.muted', {}, duration(entry.durationSeconds))
          : h('span.spent.muted', {}, 'so far'),
        entry.reason ? h('div.sub', {}, entry.reason) : null,
      ),
    ),
  );
  if (entries.length === 0) list.append(h('li.muted', {}, 'no phases yet'));
}
