// Form parts shared by the model-manager pages (Catalogue: install an entry; Storage: pre-fetch
// weights): labelled inputs, the download target (local path, PVC or S3 with their fields) and
// file patterns, each input claiming the input paths its union errors name (forms.js).
//
// The same target goes into `installCatalogEntry(input: …)` and `downloadWeights(input: …)`, whose
// refusals name `downloadTarget.local.localPath` or `input.downloadTarget…`: every input claims
// both spellings, so the error lands next to it either way.

import { h } from '../dom.js';

/** `paths` and the same paths under `input.` (the mutations' argument name). */
export function claims(paths) {
  const list = paths.split(/\s+/).filter(Boolean);
  return [...list, ...list.map((path) => `input.${path}`)].join(' ');
}

/** A labelled input in a `.field`; `field` lists the input paths its errors name. */
export function input(id, label, { field = '', hint = null, wide = false, tag = 'input', ...props } = {}) {
  const hintId = hint ? `${id}-hint` : null;
  return h(
    `div.field${wide ? '.wide' : ''}`,
    {},
    h('label', { for: id }, label),
    h(tag, { id, name: id, spellcheck: 'false', dataset: { field: claims(field) }, 'aria-describedby': hintId, ...props }),
    hint ? h('p.hint', { id: hintId }, hint) : null,
  );
}

/** The download target's fieldset: a choice of LOCAL / PVC / S3 and each one's fields (ids under `prefix`). */
export function targetFields(prefix, localHint) {
  const id = (name) => `${prefix}-${name}`;
  const choice = (value, text, first) =>
    h(
      'label',
      {},
      h('input', {
        type: 'radio',
        name: id('target'),
        value,
        id: id(`target-${value.toLowerCase()}`),
        checked: value === 'LOCAL',
        dataset: first ? { field: claims('downloadTarget') } : {},
        onchange: (event) => showTarget(event.target.form, prefix),
      }),
      text,
    );
  return h(
    'fieldset',
    { id: id('target-fields') },
    h('legend', {}, 'Download target'),
    h('div.choices', {}, choice('LOCAL', 'Local path', true), choice('PVC', 'PersistentVolumeClaim'), choice('S3', 'S3 bucket')),
    h(
      'div.form-grid',
      { id: id('local-fields') },
      input(id('local-path'), 'Local path', { field: 'downloadTarget.local downloadTarget.local.localPath', wide: true, hint: localHint }),
    ),
    h(
      'div.form-grid',
      { id: id('pvc-fields'), hidden: true },
      input(id('pvc-claim'), 'Claim name', { field: 'downloadTarget.pvc downloadTarget.pvc.claimName' }),
      input(id('pvc-subpath'), 'Sub-path', { field: 'downloadTarget.pvc.subPath' }),
      input(id('pvc-class'), 'Storage class', { field: 'downloadTarget.pvc.storageClass' }),
      input(id('pvc-size'), 'Size (GiB)', { field: 'downloadTarget.pvc.sizeGi', type: 'number', min: 1 }),
    ),
    h(
      'div.form-grid',
      { id: id('s3-fields'), hidden: true },
      input(id('s3-endpoint'), 'Endpoint', { field: 'downloadTarget.s3 downloadTarget.s3.endpoint', placeholder: 'AWS' }),
      input(id('s3-bucket'), 'Bucket', { field: 'downloadTarget.s3.bucket' }),
      input(id('s3-region'), 'Region', { field: 'downloadTarget.s3.region', placeholder: 'us-east-1' }),
      input(id('s3-prefix'), 'Prefix', { field: 'downloadTarget.s3.prefix' }),
      input(id('s3-key-id'), 'Access key id', { field: 'downloadTarget.s3.accessKeyId' }),
      input(id('s3-secret'), 'Secret access key', {
        field: 'downloadTarget.s3.secretAccessKey',
        type: 'password',
        autocomplete: 'new-password',
        hint: 'Stored encrypted; never shown again.',
      }),
    ),
  );
}

/** Shows the chosen target's fields only (hidden inputs claim no error). */
export function showTarget(form, prefix) {
  const kind = form.querySelector(`input[name="${prefix}-target"]:checked`).value;
  for (const name of ['LOCAL', 'PVC', 'S3']) form.querySelector(`#${prefix}-${name.toLowerCase()}-fields`).hidden = name !== kind;
}

const value = (form, id) => form.querySelector(`#${id}`)?.value.trim() ?? '';
const orNull = (text) => (text === '' ? null : text);

/** The `DownloadTargetInput` the fieldset describes; an empty local path is `localDefault`. */
export function readTarget(form, prefix, localDefault = '') {
  const id = (name) => `${prefix}-${name}`;
  const kind = form.querySelector(`input[name="${id('target')}"]:checked`).value;
  if (kind === 'LOCAL') return { local: { localPath: value(form, id('local-path')) || localDefault } };
  if (kind === 'PVC') {
    const size = value(form, id('pvc-size'));
    return {
      pvc: {
        claimName: value(form, id('pvc-claim')),
        subPath: orNull(value(form, id('pvc-subpath'))),
        storageClass: orNull(value(form, id('pvc-class'))),
        sizeGi: size === '' ? null : Number(size),
      },
    };
  }
  return {
    s3: {
      endpoint: orNull(value(form, id('s3-endpoint'))),
      bucket: orNull(value(form, id('s3-bucket'))),
      region: orNull(value(form, id('s3-region'))),
      prefix: orNull(value(form, id('s3-prefix'))),
      accessKeyId: orNull(value(form, id('s3-key-id'))),
      secretAccessKey: orNull(form.querySelector(`#${id('s3-secret')}`).value),
    },
  };
}

/** Clears the secrets a form sent (they go out once and are never shown again). */
export function forgetSecrets(form) {
  for (const secret of form.querySelectorAll('input[type="password"]')) secret.value = '';
}

/** The allow / ignore globs' inputs. */
export function patternFields(prefix) {
  return [
    input(`${prefix}-allow`, 'Only files matching', { field: 'allowPatterns', placeholder: '*.json, *.safetensors', hint: 'Globs, comma-separated; empty: every file.' }),
    input(`${prefix}-ignore`, 'Except files matching', { field: 'ignorePatterns', placeholder: '*.pth, original/*' }),
  ];
}

/** A globs input as a list (null when empty). */
export function readPatterns(form, id) {
  const list = value(form, id)
    .split(',')
    .map((glob) => glob.trim())
    .filter(Boolean);
  return list.length ? list : null;
}

/** The default local path for a repo: the organisation's area under the first allowed root. */
export function localPathFor(ctx, name) {
  const root = ctx.serverInfo?.localRoots?.[0];
  if (!root || !name) return '';
  return `${root.replace(/\/+$/, '')}/${name.replace(/^https?:\/\/[^/]+\//, '').replace(/\/+$/, '')}`;
}

/** `when` as a short date and time (or a dash). */
export function stamp(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  return `${date.toISOString().slice(0, 10)} ${date.toTimeString().slice(0, 8)}`;
}

/** An entry's problems as `file:line field message` (null when it has none). */
export function issuesList(entry) {
  if (entry.issues.length === 0) return null;
  return h(
    'ul.mgr-issues',
    { 'data-section': 'issues' },
    [...entry.issues].sort((a, b) => (a.line ?? 0) - (b.line ?? 0)).map((issue) =>
      h(
        'li',
        { dataset: { field: issue.field ?? '', line: String(issue.line ?? '') } },
        h('span.mono', {}, `${issue.path}${issue.line ? `:${issue.line}` : ''}`),
        issue.field ? [' ', h('code', {}, issue.field)] : null,
        ` ${issue.message}`,
      ),
    ),
  );
}

/** What an entry asks for: shown under its row by *Details* (and by the draft panel). */
export function entryDetails(entry) {
  const resources = entry.resources;
  const asked = [
    resources.cpu && `cpu ${resources.cpu}`,
    resources.memory && `memory ${resources.memory}`,
    resources.gpu !== null && resources.gpu !== undefined && `${resources.gpu} GPU`,
    resources.gpuType,
  ].filter(Boolean);
  return h(
    'dl.facts.mgr-entry',
    { 'data-section': 'details' },
    h('div', {}, h('dt', {}, 'Repository'), h('dd.mono', {}, `${entry.repo ?? '—'}${entry.revision ? ` @ ${entry.revision}` : ''}`)),
    h('div', {}, h('dt', {}, 'Engine'), h('dd', {}, entry.engine)),
    h('div', { 'data-fact': 'flags' }, h('dt', {}, 'Flags'), h('dd.mono', {}, entry.flags.join(' ') || '—')),
    h('div', {}, h('dt', {}, 'Resources'), h('dd', {}, asked.join(' · ') || 'defaults')),
    h('div', {}, h('dt', {}, 'Tags'), h('dd', {}, entry.tags.join(', ') || '—')),
    entry.description ? h('div.wide', {}, h('dt', {}, 'Description'), h('dd', {}, entry.description)) : null,
  );
}
