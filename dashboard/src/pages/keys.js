// The API keys page: create a key (its secret shown once, with a copy button), list the
// organisation's keys, revoke one.
//
// The secret exists in the page only between `createApiKey`'s answer and "Done" (or leaving the
// page): it is held by one DOM input, never in local storage, a variable of the module or the
// address bar, and the listing shows only the prefix the server keeps. The form's union errors
// (ValidationError on `name` or `role`, ForbiddenError) are shown next to the field they name.
// Revoke asks first; the key's row then shows it revoked (with "show revoked") or leaves.
// Keys have no event stream; the list is read when the page opens and after each change.

import './ops.css';
import ApiKeys from '@operations/ApiKeys.graphql';
import CreateApiKey from '@operations/CreateApiKey.graphql';
import RevokeApiKey from '@operations/RevokeApiKey.graphql';
import { fill, h } from '../dom.js';
import { clock } from '../format.js';
import { coalesce } from '../graphql.js';
import { clearErrors, confirmAction, reportResult, unionError } from '../forms.js';
import { pageHead, problem } from './ops-kit.js';

const PAGE_SIZE = 100;
const ROLES = ['VIEWER', 'EDITOR', 'ADMIN'];

function dateTime(iso) {
  return iso ? `${new Date(iso).toLocaleDateString()} ${clock(iso)}` : '—';
}

/** Copies `text`; falls back to selecting `input` and the old command where the API is missing. */
async function copy(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    input.select();
    return document.execCommand?.('copy') ?? false;
  }
}

function secretPanel(created, onDone) {
  const input = h('input.mono', { id: 'key-secret', readonly: true, value: created.key, 'aria-label': 'The new key', spellcheck: 'false' });
  const copied = h('span.muted', { 'aria-live': 'polite' });
  const copyButton = h(
    'button',
    {
      type: 'button',
      id: 'key-copy',
      onclick: async () => {
        copied.textContent = (await copy(created.key, input)) ? 'Copied.' : 'Copy failed: select the key and copy it.';
      },
    },
    'Copy',
  );
  const done = h('button.ghost', { type: 'button', id: 'key-done', onclick: onDone }, 'Done');
  return {
    element: h(
      'div.ops-secret',
      { role: 'region', 'aria-label': 'New API key' },
      h('p', {}, h('strong', {}, `Key “${created.apiKey.name}” (${created.apiKey.role.toLowerCase()}) created. `), 'Copy it now: it is shown this once and never again.'),
      h('div.ops-secret-row', {}, input, copyButton, done, copied),
      h('p.hint', {}, 'Send it as ', h('code', {}, 'Authorization: Bearer <key>'), ' to /v1 and /graphql.'),
    ),
    focus: () => copyButton.focus(),
  };
}

export function mount(root, ctx) {
  const name = h('input', { id: 'key-name', name: 'name', 'data-field': 'name', required: true, maxlength: '100', placeholder: 'ci-pipeline', autocomplete: 'off' });
  const role = h('select', { id: 'key-role', name: 'role', 'data-field': 'role' }, ROLES.map((r) => h('option', { value: r, selected: r === 'VIEWER' }, r.toLowerCase())));
  const submit = h('button', { type: 'submit', id: 'key-submit' }, 'Create key');
  const form = h(
    'form.add-form.ops-key-form',
    { id: 'key-form', autocomplete: 'off', 'aria-label': 'Create an API key' },
    h('div.field.grow', {}, h('label', { for: 'key-name' }, 'Name'), name),
    h('div.field', {}, h('label', { for: 'key-role' }, 'Role'), role),
    h('div.field.submit', {}, submit),
    h('p.message.ops-form-message', { id: 'key-form-message', 'data-form-message': true, role: 'alert' }),
  );
  const secret = h('div', { id: 'key-created' });
  const showRevoked = h('input', { type: 'checkbox', id: 'keys-revoked' });
  const rows = h('tbody', { id: 'key-rows' });
  const count = h('span.count');
  const empty = h('p.empty', { hidden: true }, 'No API keys yet.');
  const message = h('p.message', { role: 'alert' });
  root.append(
    h(
      'section.card.ops-page',
      { 'data-page': 'keys' },
      pageHead('API keys', h('label.ops-check', { for: 'keys-revoked' }, showRevoked, ' show revoked')),
      h('h3', {}, 'Create a key'),
      form,
      secret,
      h('h3', {}, 'Keys ', count),
      message,
      h(
        'table.ops-table',
        { 'data-section': 'keys' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Prefix'), h('th', {}, 'Role'), h('th', {}, 'Created'), h('th', {}, 'By'), h('th', {}, 'State'), h('th', {}, ''))),
        rows,
      ),
      empty,
    ),
  );
  let gone = false;
  const isAdmin = ctx.viewer?.role === 'ADMIN';
  submit.disabled = !isAdmin;

  function row(key) {
    const revoked = key.revokedAt !== null;
    return h(
      'tr',
      { dataset: { keyId: key.id, revoked: String(revoked) } },
      h('td', {}, key.name),
      h('td.mono', {}, `${key.prefix}…`),
      h('td', {}, key.role.toLowerCase()),
      h('td', {}, dateTime(key.createdAt)),
      h('td', {}, key.createdBy),
      h('td', {}, revoked ? h('span.badge.phase-failed', { title: `by ${key.revokedBy ?? '?'}` }, `revoked ${dateTime(key.revokedAt)}`) : h('span.badge.phase-ready', {}, 'active')),
      h('td.actions', {}, revoked ? null : h('button.small.danger', { type: 'button', 'data-action': 'revoke', 'aria-label': `Revoke ${key.name}`, onclick: () => revoke(key) }, 'Revoke')),
    );
  }

  const load = coalesce(async () => {
    try {
      const data = await ctx.request(ApiKeys, { limit: PAGE_SIZE, offset: 0, includeRevoked: showRevoked.checked });
      if (gone) return;
      fill(rows, data.apiKeys.items.map(row));
      count.textContent = String(data.apiKeys.total);
      empty.hidden = data.apiKeys.total > 0;
      problem(message, data.apiKeys.total > PAGE_SIZE ? `Showing the newest ${PAGE_SIZE} of ${data.apiKeys.total}.` : null, 'warn');
    } catch (error) {
      if (!gone) problem(message, `Could not list the keys: ${error.message}`);
    }
  });

  async function revoke(key) {
    const question = `Revoke the key “${key.name}” (${key.prefix}…)? Whatever uses it is refused from now on.`;
    if (!(await confirmAction(question, { confirm: 'Revoke', title: 'Revoke this key?' }))) return;
    try {
      const data = await ctx.request(RevokeApiKey, { id: key.id });
      const failure = unionError(data.revokeApiKey, 'ApiKey');
      problem(message, failure ? `${failure.type}: ${failure.message}` : `Revoked “${key.name}”.`, failure ? 'error' : 'ok');
    } catch (error) {
      problem(message, error.message);
    }
    await load(null);
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    fill(secret);
    submit.disabled = true;
    try {
      const data = await ctx.request(CreateApiKey, { name: name.value, role: role.value });
      const result = data.createApiKey;
      if (reportResult(form, result, 'CreatedApiKey')) return;
      form.reset();
      const panel = secretPanel(result, () => {
        fill(secret); // the only copy of the secret goes with the panel
        name.focus();
      });
      fill(secret, panel.element);
      panel.focus();
      await load(null);
    } catch (error) {
      reportResult(form, { __typename: 'Error', errorMessage: error.message }, 'CreatedApiKey');
    } finally {
      submit.disabled = !isAdmin;
    }
  });
  showRevoked.addEventListener('change', () => load(null));
  if (isAdmin) load(null);
  else problem(message, `API keys are managed by admins; you are signed in as ${ctx.viewer?.role?.toLowerCase() ?? 'nobody'}.`, 'warn');
  return () => {
    gone = true;
    fill(secret);
  };
}
