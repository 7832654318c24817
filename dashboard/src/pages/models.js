// The models page (`#/models`): one page of the organisation's models at a time, with the true
// total, search, filters (phase, inference phase, access mode, tag), sort and paging, all kept
// in the address (`#/models?q=llama&phase=READY&sort=name&page=3`), so reload and Back work.
//
// Only the page shown is read (`DashboardModels`, at most 100 rows) and drawn, so 10,000 models
// cost what 50 do. Live: ModelEvents and InferenceEvents over the shell's socket. An event about
// a row on the page updates it in place (a download's bar, a phase badge) or reads that model
// again (`DashboardModel`, one read per model at a time); an event that may change which
// models are on the page or the total (a model created, deleted or changing phase elsewhere)
// reads the page again, at most once per RELOAD_EVERY_MS. Events arriving while the page is
// being read are held back and applied afterwards.

import './core.css';
import DashboardModel from '@operations/DashboardModel.graphql';
import DashboardModels from '@operations/DashboardModels.graphql';
import InferenceEvents from '@operations/InferenceEvents.graphql';
import ModelEvents from '@operations/ModelEvents.graphql';
import { modelActions } from '../actions.js';
import { fill, h } from '../dom.js';
import { coalesce } from '../graphql.js';
import { ModelStore } from '../store.js';
import { addActivity, addNote, modelRow } from '../view.js';

const PAGE_SIZES = [25, 50, 100];
const DEFAULT_SIZE = 50;
const SEARCH_DELAY_MS = 300;
const RELOAD_EVERY_MS = 1000;
const SORTS = [
  ['newest', 'NEWEST', 'Newest first'],
  ['oldest', 'OLDEST', 'Oldest first'],
  ['name', 'NAME', 'Name (a–z)'],
  ['name_desc', 'NAME_DESC', 'Name (z–a)'],
];
const PHASES = ['PENDING', 'PULLING', 'READY', 'FAILED'];
const INFERENCE_PHASES = ['NONE', 'PENDING', 'CREATING', 'RUNNING', 'FAILED', 'CRASH_LOOP_BACK_OFF', 'STOPPED'];
const ACCESS_MODES = [
  ['LOCAL', 'Hugging Face (local weights)'],
  ['REMOTE_API', 'Remote API'],
  ['ENGINE', 'Fetched by its engine'],
];

/** The page's view as the address states it (unknown values fall back to the defaults). */
export function readView(params) {
  const size = Number(params.get('size'));
  const page = Math.max(1, Math.floor(Number(params.get('page')) || 1));
  const pick = (key, allowed) => (allowed.includes(params.get(key)) ? params.get(key) : '');
  return {
    q: (params.get('q') ?? '').slice(0, 256),
    phase: pick('phase', PHASES),
    inference: pick('inference', INFERENCE_PHASES),
    access: pick('access', ACCESS_MODES.map(([v]) => v)),
    tag: (params.get('tag') ?? '').slice(0, 64),
    sort: pick('sort', SORTS.map(([v]) => v)) || 'newest',
    size: PAGE_SIZES.includes(size) ? size : DEFAULT_SIZE,
    page,
  };
}

/** The `models` variables for a view. */
export function queryVariables(view) {
  const filter = {};
  if (view.q) filter.search = view.q;
  if (view.phase) filter.phase = view.phase;
  if (view.inference === 'NONE') filter.hasInference = false;
  else if (view.inference) filter.inferencePhase = view.inference;
  if (view.access) filter.accessMode = view.access;
  if (view.tag) filter.tag = view.tag;
  return {
    filter,
    limit: view.size,
    offset: (view.page - 1) * view.size,
    orderBy: SORTS.find(([v]) => v === view.sort)[1],
  };
}

/** The address parameters for a view (defaults left out). */
function viewParams(view) {
  return {
    q: view.q,
    phase: view.phase,
    inference: view.inference,
    access: view.access,
    tag: view.tag,
    sort: view.sort === 'newest' ? '' : view.sort,
    size: view.size === DEFAULT_SIZE ? '' : view.size,
    page: view.page === 1 ? '' : view.page,
  };
}

function select(id, label, options, value, field) {
  return h(
    'div.field',
    {},
    h('label', { for: id }, label),
    h(
      'select',
      { id, name: field, dataset: { view: field } },
      options.map(([optionValue, text]) => h('option', { value: optionValue, selected: optionValue === value }, text)),
    ),
  );
}

function toolbar(view) {
  return h(
    'form.toolbar',
    { id: 'models-filters', role: 'search', autocomplete: 'off', onsubmit: (event) => event.preventDefault() },
    h(
      'div.field.grow',
      {},
      h('label', { for: 'models-search' }, 'Search'),
      h('input', {
        id: 'models-search',
        type: 'search',
        name: 'q',
        value: view.q,
        placeholder: 'name, display name or repo',
        spellcheck: 'false',
        dataset: { view: 'q' },
      }),
    ),
    select('models-phase', 'Phase', [['', 'any'], ...PHASES.map((p) => [p, p])], view.phase, 'phase'),
    select(
      'models-inference',
      'Inference',
      [['', 'any'], ...INFERENCE_PHASES.map((p) => [p, p === 'NONE' ? 'none' : p])],
      view.inference,
      'inference',
    ),
    select('models-access', 'Access', [['', 'any'], ...ACCESS_MODES], view.access, 'access'),
    h(
      'div.field',
      {},
      h('label', { for: 'models-tag' }, 'Tag'),
      h('input', { id: 'models-tag', name: 'tag', value: view.tag, list: 'models-tags', size: 10, dataset: { view: 'tag' } }),
      h('datalist', { id: 'models-tags' }),
    ),
    select('models-sort', 'Sort', SORTS.map(([v, , text]) => [v, text]), view.sort, 'sort'),
    select('models-size', 'Per page', PAGE_SIZES.map((n) => [String(n), String(n)]), String(view.size), 'size'),
  );
}

export function mount(root, ctx) {
  let view = readView(ctx.route.params);
  const store = new ModelStore();
  const rows = new Map();
  /** model id → `{ text, kind, type }`: what the last action on it said, shown in its row. */
  const notes = new Map();
  const actions = modelActions(ctx);
  let alive = true;
  let pending = null; // events held back while the page is read
  let reloadTimer = null;
  let lastReload = 0;
  let searchTimer = null;
  let loadSequence = 0;

  const count = h('span.count', { id: 'model-count', 'aria-live': 'polite' });
  const body = h('tbody', { id: 'models' });
  const empty = h('p.empty', { id: 'models-empty', hidden: true });
  const range = h('span.muted', { id: 'models-range', 'aria-live': 'polite' });
  const previous = h('button.ghost', { type: 'button', id: 'models-previous', onclick: () => go(view.page - 1) }, '← Previous');
  const next = h('button.ghost', { type: 'button', id: 'models-next', onclick: () => go(view.page + 1) }, 'Next →');
  const pageLabel = h('span.muted', { id: 'models-page' });
  const activity = h('ol.activity', { id: 'activity' });
  const filters = toolbar(view);
  let table = null;
  root.append(
    h(
      'section.card',
      {},
      h(
        'div.card-head',
        {},
        h('h2', { tabindex: '-1' }, 'Models ', count),
        h(
          'div.pane-buttons',
          {},
          h('a.button', { href: '#/add' }, 'Add model'),
          h('button.ghost', { type: 'button', id: 'refresh', onclick: () => load() }, 'Refresh'),
        ),
      ),
      filters,
      h(
        'div.table-wrap',
        {},
        (table = h(
          'table.models',
          { 'aria-describedby': 'models-range' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ['Name', 'Source', 'Phase', 'Inference'].map((text) => h('th', { scope: 'col' }, text)),
              h('th.num', { scope: 'col' }, 'Size'),
              h('th.download', { scope: 'col' }, 'Download'),
              h('th.actions', { scope: 'col' }, 'Actions'),
            ),
          ),
          body,
        )),
      ),
      empty,
      h('nav.pager', { 'aria-label': 'Pages of models' }, previous, pageLabel, next, range),
    ),
    h('section.card', {}, h('h2', {}, 'Activity'), activity),
  );

  // ---- drawing ----------------------------------------------------------------------------

  function handlers() {
    return { act: run, noteFor: (id) => notes.get(id), canEdit: ctx.canEdit };
  }

  /** Draws the rows named in `ids` (all rows when omitted), in the server's order. */
  function render(ids = null) {
    const models = store.sorted();
    const wanted = new Set(models.map((m) => m.id));
    for (const [id, row] of rows) {
      if (!wanted.has(id)) {
        row.remove();
        rows.delete(id);
      }
    }
    let before = null;
    for (const model of models) {
      let row = rows.get(model.id);
      if (!row || ids === null || ids.has(model.id)) {
        const fresh = modelRow(model, handlers());
        if (row) row.replaceWith(fresh);
        row = fresh;
        rows.set(model.id, row);
      }
      const expected = before ? before.nextElementSibling : body.firstElementChild;
      if (expected !== row) {
        if (before) before.after(row);
        else body.prepend(row);
      }
      before = row;
    }
  }

  function renderPager(total) {
    const pages = Math.max(1, Math.ceil(total / view.size));
    const first = total === 0 ? 0 : (view.page - 1) * view.size + 1;
    const last = Math.min(total, view.page * view.size);
    count.textContent = total.toLocaleString('en');
    count.dataset.total = String(total);
    range.textContent = total === 0 ? '' : `${first.toLocaleString('en')}–${last.toLocaleString('en')} of ${total.toLocaleString('en')}`;
    pageLabel.textContent = `page ${view.page} of ${pages}`;
    previous.disabled = view.page <= 1;
    next.disabled = view.page >= pages;
    const filtered = Object.keys(queryVariables(view).filter).length > 0;
    empty.hidden = store.order.length > 0;
    empty.textContent = filtered ? 'No models match.' : 'No models yet: add one.';
    const tags = new Set(store.sorted().flatMap((m) => m.tags ?? []));
    fill(filters.querySelector('#models-tags'), [...tags].sort().map((t) => h('option', { value: t })));
  }

  // ---- reading ----------------------------------------------------------------------------

  /** Reads the page the view names, holding live events back until it is drawn. */
  async function load() {
    const mine = ++loadSequence;
    pending ??= [];
    lastReload = Date.now();
    table.setAttribute('aria-busy', 'true');
    try {
      const data = await ctx.request(DashboardModels, queryVariables(view));
      if (!alive || mine !== loadSequence) return;
      const total = data.models.total;
      const pages = Math.max(1, Math.ceil(total / view.size));
      if (view.page > pages) {
        // The page went away (models deleted, a narrower filter): show the last one.
        view = { ...view, page: pages };
        ctx.setParams(viewParams(view), { replace: true });
        load();
        return;
      }
      store.replaceAll(data.models.items);
      render();
      renderPager(total);
      table.dataset.loaded = String(mine);
    } catch (error) {
      if (alive) ctx.flash(`Could not list models: ${error.message}`, 'error');
    } finally {
      if (alive && mine === loadSequence) {
        table.removeAttribute('aria-busy');
        const held = pending ?? [];
        pending = null;
        for (const event of held) handleEvent(event);
      }
    }
  }

  /** Reads the page again soon: at most once per RELOAD_EVERY_MS. */
  function reloadSoon() {
    if (reloadTimer !== null) return;
    const wait = Math.max(0, lastReload + RELOAD_EVERY_MS - Date.now());
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      load();
    }, wait);
  }

  const refetch = coalesce(async (id) => {
    try {
      const data = await ctx.request(DashboardModel, { id });
      if (!alive || !store.has(id)) return;
      if (data.model && !data.model.isDeleted) store.upsert(data.model);
      else {
        store.remove(id);
        reloadSoon();
      }
      render(new Set([id]));
    } catch (error) {
      if (alive) ctx.flash(`Could not read model ${id}: ${error.message}`, 'error');
    }
  });

  function handleEvent(event) {
    if (!alive) return;
    if (pending !== null) {
      pending.push(event);
      return;
    }
    const modelId = event.modelIds?.[0] ?? (event.resourceKind === 'MODEL' ? event.resourceId : null);
    if (event.type !== 'PROGRESS') addActivity(activity, event, modelId ? store.models.get(modelId)?.name : null);
    const ids = [...(event.modelIds ?? []), event.resourceKind === 'MODEL' ? event.resourceId : null];
    const onPage = ids.some((id) => id !== null && store.has(id));
    if (!onPage && event.type !== 'PROGRESS' && event.type !== 'OVERFLOW') {
      reloadSoon(); // the page's members or the total may have changed
      return;
    }
    const { changed, refetch: again, resync } = store.applyEvent(event);
    if (resync) {
      load();
      return;
    }
    if (changed.size > 0) render(changed);
    for (const id of again) {
      if (store.has(id)) refetch(id);
    }
    // A change of phase can move a row out of a filtered page or another place in the order.
    if (event.type === 'PHASE_CHANGED' && (view.phase || view.inference)) reloadSoon();
    if (event.type === 'CREATED' || event.type === 'DELETED') reloadSoon();
  }

  // ---- acting -----------------------------------------------------------------------------

  function setNote(id, note) {
    if (note) notes.set(id, note);
    else notes.delete(id);
    render(new Set([id]));
  }

  async function run(kind, model) {
    const outcome = kind === 'delete' ? await actions.remove(model) : await actions[kind](model);
    if (!alive || outcome === null) return;
    if (outcome.error) {
      setNote(model.id, { text: `${outcome.error.type}: ${outcome.error.message}`, kind: 'error', type: outcome.error.type });
    } else {
      setNote(model.id, outcome.note ?? null);
      const done = { start: 'Starting', stop: 'Stopping', cancel: 'Cancelled the download of', retry: 'Retrying', delete: 'Deleted' };
      ctx.flash(`${done[kind]} ${model.name}`);
    }
    if (kind === 'delete' && !outcome.error) {
      store.remove(model.id);
      render(new Set());
      reloadSoon();
    } else {
      refetch(model.id);
    }
  }

  // ---- the view in the address --------------------------------------------------------------

  function change(patch, { replace = false } = {}) {
    view = { ...view, ...patch };
    ctx.setParams(viewParams(view), { replace });
    load();
  }

  function go(page) {
    change({ page: Math.max(1, page) });
    body.closest('.table-wrap').scrollTop = 0;
  }

  filters.addEventListener('change', (event) => {
    const key = event.target.dataset.view;
    if (!key || key === 'q') return;
    const value = key === 'size' ? Number(event.target.value) : event.target.value.trim();
    change({ [key]: value, page: 1 });
  });
  filters.querySelector('#models-search').addEventListener('input', (event) => {
    clearTimeout(searchTimer);
    const q = event.target.value.trim().slice(0, 256);
    searchTimer = setTimeout(() => {
      if (q === view.q) return;
      // Typing replaces the address; the first keystroke of a new search pushes it.
      change({ q, page: 1 }, { replace: view.q !== '' && q !== '' });
    }, SEARCH_DELAY_MS);
  });

  // ---- live ---------------------------------------------------------------------------------

  let initial = null;
  const stopStatus = ctx.connection((status) => {
    initial ??= status;
    if (status.state === 'resumed') addNote(activity, `reconnected: replaying after cursor ${status.cursor}`);
  });
  let freshRead = null;
  const fresh = () => {
    // Both streams call this when they start with nothing to resume from: read once.
    freshRead ??= Promise.resolve().then(() => {
      freshRead = null;
      return load();
    });
  };
  ctx.subscribe(ModelEvents, {}, { next: handleEvent, fresh });
  ctx.subscribe(InferenceEvents, {}, { next: handleEvent, fresh });
  // Read now unless the streams start afresh once the socket is up (they call `fresh`).
  const firstConnect = initial.cursor === null && ['connecting', 'reconnecting'].includes(initial.state);
  if (freshRead === null && !firstConnect) load();

  return () => {
    alive = false;
    clearTimeout(reloadTimer);
    clearTimeout(searchTimer);
    stopStatus();
  };
}
