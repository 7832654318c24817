// The Storage page: how full each place weights go to is, what is stored there, and deleting
// weights.
//
// `WeightsList` reads both the inventory (one page of `weightsList`, newest first) and
// `weightsUsage` (used / free / total of each allowed local root, measured now, and of each PVC
// as its last download pod measured it). A location's bar shows the bytes of READY weights
// inside the bytes used.
//
// Delete asks first, then sends `deleteWeights(force: false)`. The server refuses while an
// inference holds the weights (ConflictError on the field `force`): the refusal is shown in the
// row, next to a "Delete anyway" button that asks again and sends `force: true`. A removed entry
// leaves the table at once (the answer says it is gone); the usage is read again.
//
// Live: every WEIGHTS event of the `ModelEvents` stream (a download created, progressing,
// finished, removed) reads the page again, at most once per RELOAD_MS.
//
// Alerts: each location shows its `alertThreshold` (a red mark on its bar) and whether it is
// `alerting` (a badge). `storageAlerts` carries each crossing (phase ALERTING or CLEAR, the
// location as `resourceId`): the card's badge flips at once and the usage is read again, so an
// alert appears and clears without a reload.
//
// Pre-fetch (prefetch.js): `downloadWeights` without a model; the new weights join the inventory
// and show their progress live. Prefetched weights (no model needs them yet) can be cancelled
// while they download (`cancelWeightsDownload`) and retried once failed or cancelled
// (`retryWeightsDownload`); a model's own download is cancelled from the model's page.
// *History* lists a weights' download attempts (`DownloadAttempts`: start, duration, outcome,
// bytes fetched and resumed, why it ended), read again with the page while it is open: the only
// place prefetched weights (which have no model page) show theirs.

import './ops.css';
import DeleteWeights from '@operations/DeleteWeights.graphql';
import DownloadAttempts from '@operations/DownloadAttempts.graphql';
import './manager.css';
import CancelWeightsDownload from '@operations/CancelWeightsDownload.graphql';
import ModelEvents from '@operations/ModelEvents.graphql';
import RetryWeightsDownload from '@operations/RetryWeightsDownload.graphql';
import StorageAlerts from '@operations/StorageAlerts.graphql';
import WeightsList from '@operations/WeightsList.graphql';
import { fill, h } from '../dom.js';
import { bytes, clock, duration, percent } from '../format.js';
import { coalesce } from '../graphql.js';
import { confirmAction, unionError } from '../forms.js';
import { pageHead, problem } from './ops-kit.js';
import { prefetchForm } from './prefetch.js';

const PAGE_SIZE = 50;
const RELOAD_MS = 1000;
const MODEL_LINKS = 2;

function usageCard(usage) {
  const used = Number(usage.used);
  const total = Number(usage.total);
  const weights = Math.min(Number(usage.weightsBytes), used);
  const when = usage.measuredAt ? `measured ${clock(usage.measuredAt)} by its last download pod` : 'measured now';
  const threshold = `${Number((usage.alertThreshold * 100).toPrecision(3))} %`;
  return h(
    'div.ops-usage',
    { dataset: { root: usage.root, kind: usage.kind, alerting: String(usage.alerting) } },
    h('div.ops-usage-head', {}, h('span.mono', {}, usage.root), h('span', {}, alertBadge(usage.alerting, threshold), ' ', h('span.chip', {}, usage.kind))),
    h(
      'div.ops-bar',
      { role: 'img', 'aria-label': `${bytes(used)} used of ${bytes(total)}, ${bytes(weights)} of it weights; alerts at ${threshold}` },
      h('div.ops-bar-used', { style: { width: `${percent(used - weights, total)}%` } }),
      h('div.ops-bar-weights', { style: { width: `${percent(weights, total)}%` } }),
      h('div.mgr-threshold', { title: `alert threshold ${threshold}`, style: { left: `${Math.min(usage.alertThreshold, 1) * 100}%` } }),
    ),
    h(
      'div.sub',
      {},
      h('span', { 'data-col': 'used' }, `${bytes(used)} used`),
      ' · ',
      h('span', { 'data-col': 'free' }, `${bytes(usage.free)} free`),
      ' · ',
      h('span', { 'data-col': 'total' }, `${bytes(total)} total`),
      ' · ',
      h('span', { 'data-col': 'weights' }, `${bytes(usage.weightsBytes)} of weights`),
      ' · ',
      h('span', { 'data-col': 'threshold' }, `alerts at ${threshold}`),
      ' · ',
      when,
    ),
  );
}

/** ALERT (usage at or over the threshold) or OK, with the threshold in its title. */
function alertBadge(alerting, threshold) {
  return alerting
    ? h('span.badge.alert-on', { 'data-alert': 'on', title: `usage is at or over ${threshold}` }, `ALERT ≥ ${threshold}`)
    : h('span.badge.alert-off', { 'data-alert': 'off', title: `alerts at ${threshold}` }, 'OK');
}

/** A PULLING download's bytes done of total, as a bar and figures. */
function progressCell(weights) {
  const progress = weights.progress;
  if (!progress || !['PENDING', 'PULLING'].includes(weights.state)) return null;
  const total = Number(progress.bytesTotal);
  const done = Number(progress.bytesDone);
  return h(
    'div.mgr-progress',
    { 'data-col': 'progress' },
    h('div.ops-bar.small', { role: 'img', 'aria-label': `${bytes(done)} of ${bytes(total)}` }, h('div.ops-bar-weights', { style: { width: `${percent(done, total)}%` } })),
    h('div.sub', {}, `${bytes(done)} of ${bytes(total)} · ${progress.filesDone}/${progress.filesTotal} files`),
  );
}

/** Links to the model pages of the models using the weights (the first few; the rest counted). */
function modelLinks(ids) {
  if (ids.length === 0) return h('span.muted', {}, '0');
  const shown = ids.slice(0, MODEL_LINKS).map((id, i) => [i ? ', ' : null, h('a.mono', { href: `#/models/${encodeURIComponent(id)}` }, id)]);
  return [shown, ids.length > MODEL_LINKS ? h('span.muted', { title: ids.slice(MODEL_LINKS).join(', ') }, ` +${ids.length - MODEL_LINKS}`) : null];
}

/** The globs a subset was chosen by (nothing when every file was fetched). */
function patterns(weights) {
  const allow = weights.allowPatterns ?? [];
  const ignore = weights.ignorePatterns ?? [];
  if (!allow.length && !ignore.length) return null;
  const text = [allow.length ? `only ${allow.join(', ')}` : null, ignore.length ? `except ${ignore.join(', ')}` : null].filter(Boolean).join('; ');
  return h('div.sub.mono', { 'data-col': 'patterns' }, text);
}

function shortRevision(weights) {
  const sha = weights.commitSha ? weights.commitSha.slice(0, 10) : null;
  return [weights.revision, sha].filter(Boolean).join(' @ ') || '—';
}

export function mount(root, ctx) {
  const usage = h('div.ops-usages', { 'data-section': 'usage' }, h('p.muted', {}, 'Reading…'));
  const rows = h('tbody', { id: 'weights-rows' });
  const count = h('span.count');
  const empty = h('p.empty', { hidden: true }, 'No weights stored: a model with local weights downloads them.');
  const message = h('p.message', { role: 'alert' });
  const pager = h('div.ops-pager');
  const refresh = h('button.ghost', { type: 'button', onclick: () => load(null) }, 'Refresh');
  root.append(
    h(
      'section.card.ops-page',
      { 'data-page': 'storage' },
      pageHead('Storage', refresh),
      message,
      h('h3', {}, 'Usage per location'),
      usage,
      h('details.mgr-details#prefetch-panel', {}, h('summary', {}, 'Pre-fetch weights'), prefetchForm(ctx, () => load(null))),
      h('h3', {}, 'Weights ', count),
      h(
        'table.ops-table',
        { 'data-section': 'weights' },
        h(
          'thead',
          {},
          h('tr', {}, h('th', {}, 'Repository'), h('th', {}, 'Revision'), h('th', {}, 'Location'), h('th', {}, 'State'), h('th.num', {}, 'Size'), h('th.num', {}, 'Models'), h('th', {}, 'Added'), h('th', {}, '')),
        ),
        rows,
      ),
      empty,
      pager,
    ),
  );
  let gone = false;
  let offset = 0;
  /** weights id → the refusal shown in its row, kept across reloads until the next try. */
  const notes = new Map();

  /** weights id → its download attempts (once read) while its History is open. */
  const histories = new Map();

  function historyRow(weights) {
    if (!histories.has(weights.id)) return null;
    const attempts = histories.get(weights.id);
    const body = !attempts
      ? h('p.muted', {}, 'Reading…')
      : attempts.length === 0
        ? h('p.muted', {}, 'No attempt yet.')
        : h(
            'ol.mgr-attempts',
            {},
            attempts.map((a) =>
              h(
                'li',
                { dataset: { attempt: String(a.attempt), outcome: a.outcome } },
                h(`span.badge.phase-${a.outcome.toLowerCase()}`, {}, a.outcome),
                ` attempt ${a.attempt}: ${clock(a.startedAt)} for ${duration(a.durationSeconds)}, ${bytes(a.bytesFetched)} fetched`,
                Number(a.bytesResumed) ? `, ${bytes(a.bytesResumed)} already there` : '',
                a.reason ? ` (${a.reason})` : '',
              ),
            ),
          );
    return h('tr.mgr-open', { dataset: { historyFor: weights.id } }, h('td', { colspan: 8 }, h('strong', {}, 'Download attempts'), body));
  }

  async function readHistory(id) {
    try {
      const data = await ctx.request(DownloadAttempts, { id });
      if (gone || !histories.has(id)) return;
      histories.set(id, data.weights?.downloadAttempts ?? []);
    } catch (error) {
      notes.set(id, { text: error.message, field: null });
    }
  }

  async function toggleHistory(weights) {
    if (histories.has(weights.id)) histories.delete(weights.id);
    else {
      histories.set(weights.id, null);
      await readHistory(weights.id);
    }
    load(null);
  }

  function row(weights) {
    const note = notes.get(weights.id);
    const remove = h(
      'button.small.danger',
      { type: 'button', 'data-action': 'delete', disabled: !ctx.canEdit, title: ctx.canEdit ? null : 'needs the editor role', onclick: () => remove_(weights, false) },
      'Delete',
    );
    return h(
      'tr',
      { dataset: { weightsId: weights.id, state: weights.state } },
      h('td.nowrap', {}, h('span.mono', {}, weights.repoId), weights.message ? h('div.sub', {}, weights.message) : null),
      h('td.mono', {}, shortRevision(weights)),
      h('td.mono.ops-location', { title: weights.location }, weights.location),
      h(
        'td',
        {},
        h(`span.badge.phase-${weights.state.toLowerCase()}`, {}, weights.state),
        weights.prefetched ? [' ', h('span.chip', { title: 'downloaded without a model (downloadWeights)' }, 'prefetched')] : null,
        progressCell(weights),
        patterns(weights),
      ),
      h('td.num', {}, bytes(weights.sizeBytes)),
      h('td.num', { 'data-col': 'models' }, modelLinks(weights.modelIds)),
      h('td', {}, clock(weights.createdAt)),
      h(
        'td.actions',
        {},
        weights.prefetched && ['PENDING', 'PULLING'].includes(weights.state)
          ? [h('button.small', { type: 'button', 'data-action': 'cancel', disabled: !ctx.canEdit, onclick: () => cancelOrRetry(weights, 'cancel') }, 'Cancel'), ' ']
          : null,
        weights.prefetched && ['FAILED', 'CANCELLED'].includes(weights.state)
          ? [h('button.small', { type: 'button', 'data-action': 'retry', disabled: !ctx.canEdit, onclick: () => cancelOrRetry(weights, 'retry') }, 'Retry'), ' ']
          : null,
        h('button.small', { type: 'button', 'data-action': 'history', 'aria-expanded': String(histories.has(weights.id)), onclick: () => toggleHistory(weights) }, 'History'),
        ' ',
        remove,
        note
          ? h(
              'div.field-error',
              { role: 'alert', 'data-field': note.field ?? '' },
              h('span.refusal', {}, note.text),
              note.field === 'force'
                ? h('button.small.danger', { type: 'button', 'data-action': 'force', disabled: !ctx.canEdit, onclick: () => remove_(weights, true) }, 'Delete anyway')
                : null,
            )
          : null,
      ),
    );
  }

  const load = coalesce(async () => {
    try {
      const data = await ctx.request(WeightsList, { limit: PAGE_SIZE, offset });
      if (gone) return;
      const page = data.weightsList;
      if (page.items.length === 0 && offset > 0 && page.total > 0) {
        offset = Math.max(0, offset - PAGE_SIZE); // the last page emptied: show the one before
        return load(null);
      }
      fill(usage, data.weightsUsage.length ? data.weightsUsage.map(usageCard) : h('p.muted', {}, 'No allowed root exists yet.'));
      await Promise.all(page.items.filter((w) => histories.has(w.id)).map((w) => readHistory(w.id)));
      if (gone) return;
      fill(rows, page.items.map((weights) => [row(weights), historyRow(weights)]));
      count.textContent = String(page.total);
      empty.hidden = page.total > 0;
      renderPager(page.total);
    } catch (error) {
      if (!gone) problem(message, `Could not read the weights: ${error.message}`);
    }
  });

  function renderPager(total) {
    const last = Math.min(total, offset + PAGE_SIZE);
    fill(
      pager,
      total > PAGE_SIZE
        ? [
            h('button.small', { type: 'button', disabled: offset === 0, onclick: () => ((offset -= PAGE_SIZE), load(null)) }, 'Previous'),
            h('span.muted', {}, ` ${offset + 1}–${last} of ${total} `),
            h('button.small', { type: 'button', disabled: last >= total, onclick: () => ((offset += PAGE_SIZE), load(null)) }, 'Next'),
          ]
        : [],
    );
  }

  async function remove_(weights, force) {
    const question = force
      ? `An inference uses these weights. Delete ${weights.repoId} at ${weights.location} anyway? ` +
        'The inference loses its files and its models fail until downloaded again.'
      : `Delete the weights of ${weights.repoId} at ${weights.location} (${bytes(weights.sizeBytes)})? ` +
        `${weights.modelIds.length} model(s) using them will need to download them again.`;
    const title = force ? 'Delete weights in use?' : 'Delete weights?';
    if (!(await confirmAction(question, { confirm: force ? 'Delete anyway' : 'Delete', title }))) return;
    notes.delete(weights.id);
    problem(message, null);
    const button = rows.querySelector(`tr[data-weights-id="${weights.id}"] button[data-action="delete"]`);
    if (button) {
      button.disabled = true;
      button.textContent = 'Deleting…';
    }
    try {
      const data = await ctx.request(DeleteWeights, { id: weights.id, force });
      const result = data.deleteWeights;
      const failure = unionError(result, 'DeletedWeights');
      if (failure) {
        notes.set(weights.id, { text: `${failure.type}: ${failure.message}`, field: failure.field });
      } else {
        rows.querySelector(`tr[data-weights-id="${weights.id}"]`)?.remove();
        const detached = result.detachedModelIds.length;
        problem(message, `Deleted ${weights.repoId}${detached ? `; ${detached} model(s) detached` : ''}.`, 'ok');
      }
    } catch (error) {
      notes.set(weights.id, { text: error.message, field: null });
    }
    await load(null);
  }

  /** Cancel a prefetched download (asked first) or retry one; the refusal stays in its row. */
  async function cancelOrRetry(weights, what) {
    if (what === 'cancel') {
      const question = `Cancel the download of ${weights.repoId} into ${weights.location}? The files fetched so far stay until it is retried or deleted.`;
      if (!(await confirmAction(question, { confirm: 'Cancel download', title: 'Cancel the download?' }))) return;
    }
    notes.delete(weights.id);
    try {
      const operation = what === 'cancel' ? CancelWeightsDownload : RetryWeightsDownload;
      const data = await ctx.request(operation, { id: weights.id });
      const failure = unionError(data[what === 'cancel' ? 'cancelWeightsDownload' : 'retryWeightsDownload'], 'Weights');
      if (failure) notes.set(weights.id, { text: `${failure.type}: ${failure.message}`, field: failure.field });
    } catch (error) {
      notes.set(weights.id, { text: error.message, field: null });
    }
    await load(null);
  }

  /** A crossing: the card's badge flips now; the usage is read again. */
  function alerted(event) {
    if (event?.type === 'RESYNC_REQUIRED') load(null); // crossings were trimmed: read the state
    if (event?.resourceKind !== 'ALERT') return;
    const card = [...usage.querySelectorAll('.ops-usage')].find((node) => node.dataset.root === event.resourceId);
    if (card) {
      const on = event.phase === 'ALERTING';
      card.dataset.alerting = String(on);
      const badge = card.querySelector('[data-alert]');
      const threshold = card.querySelector('[data-col="threshold"]')?.textContent.replace('alerts at ', '') ?? '';
      badge?.replaceWith(alertBadge(on, threshold));
    }
    problem(message, event.message, event.phase === 'ALERTING' ? 'warn' : 'ok');
    load(null);
  }
  const stopAlerts = ctx.subscribe(StorageAlerts, {}, { next: alerted });

  let timer = null;
  const unsubscribe = ctx.subscribe(ModelEvents, {}, {
    next: (event) => {
      if (event?.resourceKind !== 'WEIGHTS' || timer !== null) return;
      timer = setTimeout(() => {
        timer = null;
        load(null);
      }, event.type === 'PROGRESS' ? RELOAD_MS : 0);
    },
  });
  load(null);
  return () => {
    gone = true;
    clearTimeout(timer);
    unsubscribe?.();
    stopAlerts?.();
  };
}
