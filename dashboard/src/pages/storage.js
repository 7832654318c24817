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

import './ops.css';
import DeleteWeights from '@operations/DeleteWeights.graphql';
import ModelEvents from '@operations/ModelEvents.graphql';
import WeightsList from '@operations/WeightsList.graphql';
import { fill, h } from '../dom.js';
import { bytes, clock, percent } from '../format.js';
import { coalesce } from '../graphql.js';
import { confirmAction, unionError } from '../forms.js';
import { pageHead, problem } from './ops-kit.js';

const PAGE_SIZE = 50;
const RELOAD_MS = 1000;
const MODEL_LINKS = 2;

function usageCard(usage) {
  const used = Number(usage.used);
  const total = Number(usage.total);
  const weights = Math.min(Number(usage.weightsBytes), used);
  const when = usage.measuredAt ? `measured ${clock(usage.measuredAt)} by its last download pod` : 'measured now';
  return h(
    'div.ops-usage',
    { dataset: { root: usage.root, kind: usage.kind } },
    h('div.ops-usage-head', {}, h('span.mono', {}, usage.root), h('span.chip', {}, usage.kind)),
    h(
      'div.ops-bar',
      { role: 'img', 'aria-label': `${bytes(used)} used of ${bytes(total)}, ${bytes(weights)} of it weights` },
      h('div.ops-bar-used', { style: { width: `${percent(used - weights, total)}%` } }),
      h('div.ops-bar-weights', { style: { width: `${percent(weights, total)}%` } }),
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
      when,
    ),
  );
}

/** Links to the model pages of the models using the weights (the first few; the rest counted). */
function modelLinks(ids) {
  if (ids.length === 0) return h('span.muted', {}, '0');
  const shown = ids.slice(0, MODEL_LINKS).map((id, i) => [i ? ', ' : null, h('a.mono', { href: `#/models/${encodeURIComponent(id)}` }, id)]);
  return [shown, ids.length > MODEL_LINKS ? h('span.muted', { title: ids.slice(MODEL_LINKS).join(', ') }, ` +${ids.length - MODEL_LINKS}`) : null];
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
      h('td', {}, h(`span.badge.phase-${weights.state.toLowerCase()}`, {}, weights.state)),
      h('td.num', {}, bytes(weights.sizeBytes)),
      h('td.num', { 'data-col': 'models' }, modelLinks(weights.modelIds)),
      h('td', {}, clock(weights.createdAt)),
      h(
        'td.actions',
        {},
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
      fill(rows, page.items.map(row));
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
  };
}
