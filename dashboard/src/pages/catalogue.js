// The Catalogue page (`#/catalogue`): the organisation's git-synced catalogue of model
// configurations: where it comes from, what the last syncs did, its entries with their
// validation state, installing one, and drafting a new entry.
//
// `Catalog` reads the source, the sync state (commit, last success, last error and its kind) and
// one page of entries (`?valid=true|false` filters, `?page=` pages; both in the address). Each
// entry shows its problems as `file:line field message`; *Details* shows what it asks for
// (flags, resources, description) and *Install* opens a form under the row (model name, download
// target, file patterns, start inference) sending `installCatalogEntry`; its refusal is shown
// next to the field it names, its success links to the new model's page.
//
// Refresh (editor) sends `refreshCatalog`; when the branch was force-pushed an admin may adopt it
// (`acceptForcePush`, asked first). Admins configure the source (`configureCatalog`: URL, branch,
// folder, user name, password: the password goes out once, is cleared from the input and only
// "a credential is stored" is shown afterwards). The draft panel (catalogue-draft.js) generates an
// entry from a hub repo, checks any entry text, and proposes it on a new branch.
//
// The catalogue has no event (the leading replica pulls on its schedule), so the page reads it
// again every REFRESH_MS while it is open, and after each of its own changes.

import './ops.css';
import './manager.css';
import Catalog from '@operations/Catalog.graphql';
import ConfigureCatalog from '@operations/ConfigureCatalog.graphql';
import InstallCatalogEntry from '@operations/InstallCatalogEntry.graphql';
import RefreshCatalog from '@operations/RefreshCatalog.graphql';
import { fill, h } from '../dom.js';
import { confirmAction, formMessage, reportResult, unionError } from '../forms.js';
import { coalesce } from '../graphql.js';
import { draftPanel } from './catalogue-draft.js';
import { entryDetails, forgetSecrets, input, issuesList, localPathFor, patternFields, readPatterns, readTarget, stamp, targetFields } from './manager-kit.js';
import { pageHead, problem } from './ops-kit.js';

const PAGE_SIZE = 50;
const REFRESH_MS = 30_000;

const ERROR_KINDS = {
  UNREACHABLE: 'the remote could not be reached',
  AUTH_REFUSED: 'the remote refused the credential',
  BRANCH_MISSING: 'the branch is gone',
  FORCE_PUSHED: 'the branch was rewritten: an admin adopts it',
  FAILED: 'git failed',
};

const short = (sha) => (sha ? sha.slice(0, 10) : '—');

function sourceFacts(catalog) {
  const sync = catalog.sync;
  const facts = [
    ['URL', catalog.url, 'url'],
    ['Branch', catalog.branch, 'branch'],
    ['Folder', catalog.folder || '(root)', 'folder'],
    ['User', catalog.username ?? '—', 'username'],
    ['Credential', catalog.hasCredentials ? 'stored (never shown)' : 'none', 'credential'],
    ['Commit', short(sync.commit), 'commit'],
    ['Remote commit', short(sync.remoteCommit), 'remote-commit'],
    ['Last success', stamp(sync.lastSuccessAt), 'last-success'],
    ['Last attempt', stamp(sync.lastAttemptAt), 'last-attempt'],
    ['Entries', `${catalog.entriesTotal} (${catalog.invalidTotal} invalid)`, 'entries'],
  ];
  return h(
    'dl.facts.ops-facts',
    { 'data-section': 'sync' },
    facts.map(([term, text, key]) => h('div', { 'data-fact': key }, h('dt', {}, term), h('dd', { class: key === 'url' ? 'mono' : null }, text))),
  );
}

function syncError(sync) {
  if (!sync.lastError) return h('p.ops-note.ok-note', { 'data-section': 'sync-error', 'data-kind': 'none' }, 'The last sync succeeded.');
  return h(
    'div.ops-note.bad-note',
    { 'data-section': 'sync-error', 'data-kind': sync.lastErrorKind ?? 'FAILED', role: 'status' },
    h('span.badge.phase-failed', {}, sync.lastErrorKind ?? 'FAILED'),
    ' ',
    h('strong', {}, ERROR_KINDS[sync.lastErrorKind] ?? 'the last sync failed'),
    ` (${stamp(sync.lastErrorAt)}): `,
    h('span.mono', {}, sync.lastError),
    h('div.sub', {}, 'The entries below are the last good snapshot.'),
  );
}

function configureForm(ctx, catalog, onDone) {
  const form = h(
    'form.mgr-form#catalog-source-form',
    { novalidate: true },
    h(
      'div.form-grid',
      {},
      input('catalog-url', 'Repository URL', { field: 'source.url url', value: catalog?.url ?? '', placeholder: 'https://git.example.com/models.git', wide: true, required: true }),
      input('catalog-branch', 'Branch', { field: 'source.branch branch', value: catalog?.branch ?? 'main' }),
      input('catalog-folder', 'Folder', { field: 'source.folder folder', value: catalog?.folder ?? '', placeholder: 'the root' }),
      input('catalog-username', 'User name', { field: 'source.username username', value: catalog?.username ?? '', autocomplete: 'off' }),
      input('catalog-password', 'Password or token', {
        field: 'source.password password',
        type: 'password',
        autocomplete: 'new-password',
        hint: catalog?.hasCredentials ? 'A credential is stored; leave empty to send none (configuring replaces it).' : 'Kept in the secret store; never shown again.',
      }),
    ),
    h('div.form-actions', {}, h('button#catalog-configure', { type: 'submit' }, catalog ? 'Save and sync' : 'Configure and sync'), h('p.message', { dataset: { formMessage: '' }, role: 'alert' })),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = (id) => form.querySelector(`#${id}`).value.trim();
    const source = {
      url: text('catalog-url'),
      branch: text('catalog-branch') || 'main',
      folder: text('catalog-folder') || null,
      username: text('catalog-username') || null,
      password: form.querySelector('#catalog-password').value || null,
    };
    const button = form.querySelector('#catalog-configure');
    button.disabled = true;
    formMessage(form, 'Proving the remote and syncing…', 'warn');
    try {
      const data = await ctx.request(ConfigureCatalog, { source });
      forgetSecrets(form);
      if (!reportResult(form, data.configureCatalog, 'Catalog')) {
        formMessage(form, `Synced ${short(data.configureCatalog.sync.commit)}: ${data.configureCatalog.entriesTotal} entries.`, 'ok');
        onDone();
      }
    } catch (error) {
      formMessage(form, error.message, 'error');
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

function installForm(ctx, entry, onInstalled) {
  const prefix = 'install';
  const form = h(
    'form.mgr-form.mgr-install',
    { novalidate: true, dataset: { entry: entry.name } },
    h('h4', {}, `Install ${entry.name}`),
    h('div.form-grid', {}, input('install-name', 'Model name', { field: 'modelName name', placeholder: entry.name }), ...patternFields(prefix)),
    targetFields(prefix, `Empty: ${localPathFor(ctx, entry.repo) || 'the first allowed root'}`),
    h(
      'label.ops-check.field',
      {},
      h('input#install-start', { type: 'checkbox', dataset: { field: 'startInference input.startInference' } }),
      `Start its inference (${entry.engine}${entry.flags.length ? ` ${entry.flags.join(' ')}` : ''})`,
    ),
    h(
      'div.form-actions',
      {},
      h('button#install-submit', { type: 'submit' }, 'Install'),
      h('button.ghost', { type: 'button', onclick: () => form.remove() }, 'Cancel'),
      h('p.message', { dataset: { formMessage: '' }, role: 'alert' }),
    ),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('#install-submit');
    const variables = {
      input: {
        name: entry.name,
        modelName: form.querySelector('#install-name').value.trim() || null,
        downloadTarget: readTarget(form, prefix, localPathFor(ctx, entry.repo)),
        allowPatterns: readPatterns(form, `${prefix}-allow`),
        ignorePatterns: readPatterns(form, `${prefix}-ignore`),
        startInference: form.querySelector('#install-start').checked,
      },
    };
    button.disabled = true;
    try {
      const data = await ctx.request(InstallCatalogEntry, variables);
      forgetSecrets(form);
      const result = data.installCatalogEntry;
      if (!reportResult(form, result, 'InstalledCatalogEntry')) onInstalled(result);
    } catch (error) {
      formMessage(form, error.message, 'error');
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

export function mount(root, ctx) {
  const admin = ctx.viewer?.role === 'ADMIN';
  const message = h('p.message', { role: 'alert', id: 'catalog-message' });
  const sourceInfo = h('div', {}, h('p.muted', {}, 'Reading the catalogue…'));
  const sourceForm = h('div');
  const source = h('div', { 'data-section': 'source' }, sourceInfo, sourceForm);
  const filter = h(
    'select#catalog-filter',
    { onchange: () => ((offset = 0), setParams(), load(null)) },
    h('option', { value: '' }, 'All entries'),
    h('option', { value: 'true' }, 'Valid only'),
    h('option', { value: 'false' }, 'Invalid only'),
  );
  const rows = h('tbody#catalog-rows');
  const count = h('span.count');
  const pager = h('div.ops-pager');
  const refresh = h('button.ghost#catalog-refresh', { type: 'button', disabled: !ctx.canEdit, onclick: () => refreshNow(false) }, 'Refresh');
  const entries = h(
    'section',
    { 'data-section': 'entries', hidden: true },
    h('div.mgr-toolbar', {}, h('h3', {}, 'Entries ', count), h('div.field', {}, h('label', { for: 'catalog-filter' }, 'Show'), filter)),
    h(
      'table.ops-table.mgr-entries',
      {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Entry'), h('th', {}, 'Repository'), h('th', {}, 'Engine'), h('th', {}, 'State'), h('th', {}, ''))),
      rows,
    ),
    pager,
  );
  const draft = draftPanel(ctx);
  root.append(h('section.card.ops-page', { 'data-page': 'catalogue' }, pageHead('Catalogue', refresh), message, source, entries, draft));

  let gone = false;
  let offset = Number(ctx.route.params.get('page') ?? 1) * PAGE_SIZE - PAGE_SIZE;
  if (!(offset >= 0)) offset = 0;
  filter.value = ctx.route.params.get('valid') ?? '';
  let configured = null;
  /** entry name → what is open under its row: 'details' or 'install'. */
  const open = new Map();

  function setParams() {
    ctx.setParams({ valid: filter.value, page: offset ? offset / PAGE_SIZE + 1 : '' }, { replace: true });
  }

  function renderSource(catalog) {
    const parts = [];
    if (catalog) {
      parts.push(h('h3', {}, 'Source and sync'), sourceFacts(catalog), syncError(catalog.sync));
      if (catalog.sync.lastErrorKind === 'FORCE_PUSHED' && admin) {
        parts.push(h('button.danger#catalog-accept', { type: 'button', onclick: () => refreshNow(true) }, 'Adopt the rewritten branch'));
      }
    } else {
      parts.push(h('p.empty', { 'data-section': 'unconfigured' }, 'No catalogue is configured.', admin ? ' Give its git remote below.' : ' An admin configures it.'));
    }
    fill(sourceInfo, parts);
    // The form is drawn again only when the catalogue becomes configured (or not): a periodic
    // read keeps what is being typed.
    const state = catalog ? 'configured' : 'none';
    if (!admin || sourceForm.dataset.state === state) return;
    sourceForm.dataset.state = state;
    const form = configureForm(ctx, catalog, () => load(null));
    fill(sourceForm, catalog ? h('details.mgr-details#catalog-configure-panel', {}, h('summary', {}, 'Configure the source'), form) : [h('h3', {}, 'Configure the source'), form]);
  }

  function row(entry) {
    const state = entry.valid ? h('span.badge.phase-ready', {}, 'VALID') : h('span.badge.phase-failed', {}, `INVALID · ${entry.issues.length}`);
    const toggle = (what) => {
      open.set(entry.name, open.get(entry.name) === what ? null : what);
      drawRows(lastItems);
    };
    const shown = open.get(entry.name);
    const actions = h(
      'td.actions',
      {},
      h('button.small', { type: 'button', 'data-action': 'details', 'aria-expanded': String(shown === 'details'), onclick: () => toggle('details') }, 'Details'),
      ' ',
      h(
        'button.small',
        { type: 'button', 'data-action': 'install', disabled: !entry.valid || !ctx.canEdit, title: entry.valid ? null : 'fix its problems first', 'aria-expanded': String(shown === 'install'), onclick: () => toggle('install') },
        'Install',
      ),
    );
    const main = h(
      'tr',
      { dataset: { entry: entry.name, path: entry.path, valid: String(entry.valid) } },
      h('td', {}, h('strong', {}, entry.displayName ?? entry.name), h('div.sub.mono', {}, entry.path), issuesList(entry)),
      h('td.mono', {}, entry.repo ?? '—', entry.revision ? h('div.sub', {}, `@ ${entry.revision}`) : null),
      h('td', {}, entry.engine),
      h('td', {}, state),
      actions,
    );
    if (!shown) return [main];
    const body =
      shown === 'details'
        ? entryDetails(entry)
        : installForm(ctx, entry, (result) => {
            open.delete(entry.name);
            drawRows(lastItems);
            const model = result.model;
            problem(message, null);
            fill(
              message,
              `Installed ${entry.name} as `,
              h('a#catalog-installed', { href: `#/models/${encodeURIComponent(model.id)}` }, model.name),
              result.inference ? ` (inference: ${result.inference.started ? 'starting' : result.inference.message})` : '',
              '; its weights are downloading.',
            );
            message.dataset.kind = 'ok';
          });
    return [main, h('tr.mgr-open', { dataset: { openFor: entry.name } }, h('td', { colspan: 5 }, body))];
  }

  let lastItems = [];
  function drawRows(items) {
    lastItems = items;
    const typing = rows.querySelector('form.mgr-install');
    if (typing && rows.contains(document.activeElement)) {
      // a read while the install form is being filled: keep the form as it is
      const name = typing.dataset.entry;
      if (open.get(name) === 'install' && items.some((e) => e.name === name)) return;
    }
    fill(rows, items.map(row));
  }

  function renderPager(total) {
    const last = Math.min(total, offset + PAGE_SIZE);
    const go = (delta) => {
      offset += delta;
      setParams();
      load(null);
    };
    fill(
      pager,
      total > PAGE_SIZE
        ? [
            h('button.small', { type: 'button', disabled: offset === 0, onclick: () => go(-PAGE_SIZE) }, 'Previous'),
            h('span.muted', {}, ` ${offset + 1}–${last} of ${total} `),
            h('button.small', { type: 'button', disabled: last >= total, onclick: () => go(PAGE_SIZE) }, 'Next'),
          ]
        : [],
    );
  }

  function render(catalog) {
    renderSource(catalog);
    configured = catalog;
    entries.hidden = !catalog;
    if (!catalog) return;
    const page = catalog.entries;
    count.textContent = filter.value ? `${page.total} of ${catalog.entriesTotal}` : String(page.total);
    drawRows(page.items);
    if (page.items.length === 0) fill(rows, h('tr', {}, h('td.muted', { colspan: 5 }, 'No entries.')));
    renderPager(page.total);
  }

  const load = coalesce(async () => {
    try {
      const valid = filter.value === '' ? null : filter.value === 'true';
      const data = await ctx.request(Catalog, { valid, limit: PAGE_SIZE, offset });
      if (gone) return;
      render(data.catalog);
    } catch (error) {
      if (!gone) problem(message, `Could not read the catalogue: ${error.message}`);
    }
  });

  async function refreshNow(accept) {
    if (accept) {
      const sync = configured?.sync;
      const question =
        `The branch ${configured?.branch} was rewritten: its commit ${short(sync?.remoteCommit)} does not contain ` +
        `${short(sync?.commit)}. Adopt it? Entries may disappear or change.`;
      if (!(await confirmAction(question, { confirm: 'Adopt it', title: 'Adopt a rewritten branch?' }))) return;
    }
    refresh.disabled = true;
    problem(message, 'Pulling…', 'warn');
    try {
      const data = await ctx.request(RefreshCatalog, { acceptForcePush: accept });
      const failure = unionError(data.refreshCatalog, 'Catalog');
      if (failure) problem(message, `${failure.type}: ${failure.message}`);
      else {
        const sync = data.refreshCatalog.sync;
        problem(message, sync.lastError ? `The pull failed: ${sync.lastError}` : `Up to date at ${short(sync.commit)}.`, sync.lastError ? 'error' : 'ok');
      }
    } catch (error) {
      problem(message, error.message);
    } finally {
      refresh.disabled = !ctx.canEdit;
    }
    await load(null);
  }

  load(null);
  const timer = setInterval(() => load(null), REFRESH_MS);
  return () => {
    gone = true;
    clearInterval(timer);
  };
}
