// The add-a-model page (`#/add`): a Hugging Face repo (with the hub preview and the GPU fit for
// vLLM; all its files or those matching some globs) downloaded to a local path, a
// PersistentVolumeClaim or an S3 bucket; or a remote
// OpenAI-compatible API with its key. Name, display name, tags and resources for both.
//
// One `createModel`. A refusal is shown next to the input its `field` names (forms.js), and
// nothing is written. The hub token or API key goes out once in that request and is never shown
// again: the input is cleared on success (and its value is never put anywhere else); the model
// only says `hasToken`. On success the page goes to the new model's page.

import './core.css';
import CreateModel from '@operations/CreateModel.graphql';
import GpuFit from '@operations/GpuFit.graphql';
import HuggingFaceModel from '@operations/HuggingFaceModel.graphql';
import { fill, h } from '../dom.js';
import { clearErrors, formMessage, reportResult, showError, unionError } from '../forms.js';
import { toHash } from '../router.js';
import { readPatterns } from './manager-kit.js';
import { renderFit, renderPreview } from '../view.js';

const REPO_ID = /^[\w.-]+\/[\w.-]+$/;
const PREVIEW_DELAY_MS = 400;

/** A labelled input in a `.field`; `field` is the input path its errors name. */
function input(id, label, { field, hint = null, wide = false, ...props } = {}) {
  const hintId = hint ? `${id}-hint` : null;
  return h(
    `div.field${wide ? '.wide' : ''}`,
    {},
    h('label', { for: id }, label),
    h('input', { id, name: id, spellcheck: 'false', dataset: { field }, 'aria-describedby': hintId, ...props }),
    hint ? h('p.hint', { id: hintId }, hint) : null,
  );
}

function radios(name, legend, options, checked, field) {
  return h(
    'fieldset',
    { id: `${name}-choice` },
    h('legend', {}, legend),
    h(
      'div.choices',
      {},
      options.map(([value, text], index) =>
        h(
          'label',
          {},
          h('input', {
            type: 'radio',
            name,
            value,
            id: `${name}-${value.toLowerCase()}`,
            checked: value === checked,
            dataset: index === 0 ? { field } : {},
          }),
          text,
        ),
      ),
    ),
  );
}

function buildForm() {
  return h(
    'form#add-form.add-model',
    { autocomplete: 'off', novalidate: true },
    radios('kind', 'Source', [['LOCAL', 'Hugging Face repo'], ['REMOTE_API', 'Remote OpenAI-compatible API']], 'LOCAL', 'source.accessMode'),
    h(
      'fieldset#hub-fields',
      {},
      h('legend', {}, 'Hugging Face'),
      h(
        'div.form-grid',
        {},
        input('repo', 'Repo', { field: 'source source.url source.repo', placeholder: 'org/name or hub URL', required: true }),
        input('revision', 'Revision', { field: 'source.revision', placeholder: 'main' }),
        input('hub-token', 'Hub token (gated or private repos)', {
          field: 'source.token',
          type: 'password',
          autocomplete: 'new-password',
          hint: 'Stored encrypted for this model; never shown again.',
        }),
        input('allow-patterns', 'Only files matching', {
          field: 'source.allowPatterns',
          placeholder: '*.json, *.safetensors',
          hint: 'Globs, comma-separated; empty: every file.',
        }),
        input('ignore-patterns', 'Except files matching', { field: 'source.ignorePatterns', placeholder: '*.pth, original/*' }),
      ),
      h('div#preview.preview', { hidden: true, 'aria-live': 'polite' }),
    ),
    h(
      'fieldset#remote-fields',
      { hidden: true },
      h('legend', {}, 'Remote API'),
      h(
        'div.form-grid',
        {},
        input('remote-url', 'Base URL', { field: 'source source.url', placeholder: 'https://api.example.com/v1', type: 'url' }),
        input('api-key', 'API key', {
          field: 'source.token',
          type: 'password',
          autocomplete: 'new-password',
          hint: 'Sent once, stored encrypted; never shown again.',
        }),
      ),
    ),
    h(
      'fieldset',
      {},
      h('legend', {}, 'Model'),
      h(
        'div.form-grid',
        {},
        input('name', 'Name', { field: 'name', placeholder: 'derived from the repo', hint: 'A DNS label: a-z, 0-9, -' }),
        input('display-name', 'Display name', { field: 'displayName', placeholder: 'required for a remote API' }),
        input('tags', 'Tags', { field: 'tags', placeholder: 'chat, small', hint: 'Comma-separated.' }),
        input('description', 'Description', { field: 'description', wide: true }),
      ),
    ),
    h(
      'fieldset#target-fields',
      {},
      h('legend', {}, 'Download target'),
      radios('target', 'Where the weights go', [['LOCAL', 'Local path'], ['PVC', 'PersistentVolumeClaim'], ['S3', 'S3 bucket']], 'LOCAL', 'downloadTarget'),
      h(
        'div.form-grid#target-local-fields',
        {},
        input('local-path', 'Local path', { field: 'downloadTarget.local', placeholder: '<allowed root>/<repo>', wide: true }),
      ),
      h(
        'div.form-grid#target-pvc-fields',
        { hidden: true },
        input('pvc-claim', 'Claim name', { field: 'downloadTarget.pvc downloadTarget.pvc.claimName' }),
        input('pvc-subpath', 'Sub-path', { field: 'downloadTarget.pvc.subPath' }),
        input('pvc-class', 'Storage class', { field: 'downloadTarget.pvc.storageClass' }),
        input('pvc-size', 'Size (GiB)', { field: 'downloadTarget.pvc.sizeGi', type: 'number', min: 1, inputmode: 'numeric' }),
      ),
      h(
        'div.form-grid#target-s3-fields',
        { hidden: true },
        input('s3-endpoint', 'Endpoint', { field: 'downloadTarget.s3 downloadTarget.s3.endpoint', placeholder: 'server default' }),
        input('s3-bucket', 'Bucket', { field: 'downloadTarget.s3.bucket', placeholder: 'server default' }),
        input('s3-region', 'Region', { field: 'downloadTarget.s3.region' }),
        input('s3-prefix', 'Prefix', { field: 'downloadTarget.s3.prefix' }),
        input('s3-key-id', 'Access key id', { field: 'downloadTarget.s3.accessKeyId' }),
        input('s3-secret', 'Secret access key', {
          field: 'downloadTarget.s3.secretAccessKey',
          type: 'password',
          autocomplete: 'new-password',
          hint: 'Stored encrypted; never shown again.',
        }),
      ),
    ),
    h(
      'fieldset',
      {},
      h('legend', {}, 'Resources'),
      h(
        'div.form-grid',
        {},
        input('cpu', 'CPU', { field: 'resources.cpu resources', placeholder: 'e.g. 4 or 500m' }),
        input('memory', 'Memory', { field: 'resources.memory', placeholder: 'e.g. 16Gi' }),
        input('gpu', 'GPUs', { field: 'resources.gpu resources.gpuType', type: 'number', min: 0, inputmode: 'numeric' }),
      ),
    ),
    h(
      'div.form-actions',
      {},
      h('button#add-submit', { type: 'submit' }, 'Add model'),
      h('p#add-message.message', { dataset: { formMessage: '' }, role: 'alert' }),
    ),
  );
}

const value = (form, id) => form.querySelector(`#${id}`).value.trim();
const orNull = (text) => (text === '' ? null : text);

/** The `CreateModelInput` the form describes; `localDefault` fills an empty local path. */
export function formInput(form, localDefault) {
  const kind = form.querySelector('input[name="kind"]:checked').value;
  const tags = value(form, 'tags')
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
  const resources = {};
  if (value(form, 'cpu')) resources.cpu = value(form, 'cpu');
  if (value(form, 'memory')) resources.memory = value(form, 'memory');
  if (value(form, 'gpu') !== '') resources.gpu = Number(value(form, 'gpu'));
  const input = {
    name: orNull(value(form, 'name')),
    displayName: orNull(value(form, 'display-name')),
    description: orNull(value(form, 'description')),
    tags: tags.length ? tags : null,
    resources: Object.keys(resources).length ? resources : null,
  };
  if (kind === 'REMOTE_API') {
    input.source = { url: value(form, 'remote-url'), accessMode: 'REMOTE_API', token: orNull(form.querySelector('#api-key').value) };
    return input;
  }
  const repo = value(form, 'repo');
  input.source = {
    url: repo,
    accessMode: 'LOCAL',
    revision: orNull(value(form, 'revision')),
    token: orNull(form.querySelector('#hub-token').value),
    allowPatterns: readPatterns(form, 'allow-patterns'),
    ignorePatterns: readPatterns(form, 'ignore-patterns'),
  };
  const target = form.querySelector('input[name="target"]:checked').value;
  if (target === 'LOCAL') {
    input.downloadTarget = { local: { localPath: value(form, 'local-path') || localDefault(repo) } };
  } else if (target === 'PVC') {
    const size = value(form, 'pvc-size');
    input.downloadTarget = {
      pvc: {
        claimName: value(form, 'pvc-claim'),
        subPath: orNull(value(form, 'pvc-subpath')),
        storageClass: orNull(value(form, 'pvc-class')),
        sizeGi: size === '' ? null : Number(size),
      },
    };
  } else {
    input.downloadTarget = {
      s3: {
        endpoint: orNull(value(form, 's3-endpoint')),
        bucket: orNull(value(form, 's3-bucket')),
        region: orNull(value(form, 's3-region')),
        prefix: orNull(value(form, 's3-prefix')),
        accessKeyId: orNull(value(form, 's3-key-id')),
        secretAccessKey: orNull(form.querySelector('#s3-secret').value),
      },
    };
  }
  return input;
}

export function mount(root, ctx) {
  const form = buildForm();
  root.append(
    h(
      'section.card',
      {},
      h('h2', { tabindex: '-1' }, 'Add a model'),
      h('p.muted', {}, 'A Hugging Face repo is downloaded to the target you choose; a remote API is ready at once.'),
      form,
    ),
  );
  const $ = (selector) => form.querySelector(selector);
  const preview = $('#preview');
  const localRoots = ctx.serverInfo?.localRoots ?? [];
  let alive = true;
  let sequence = 0;
  let timer = null;
  let previewed = '';

  function localDefault(repo) {
    const rootPath = localRoots[0]; // the organisation's area under the first allowed root
    if (!rootPath || !repo) return '';
    const name = repo.replace(/^https?:\/\/[^/]+\//, '').replace(/\/+$/, '');
    return `${rootPath.replace(/\/+$/, '')}/${name}`;
  }

  function showKind() {
    const remote = $('input[name="kind"]:checked').value === 'REMOTE_API';
    $('#hub-fields').hidden = remote;
    $('#remote-fields').hidden = !remote;
    $('#target-fields').hidden = remote;
    $('#display-name').required = remote;
    clearErrors(form);
  }

  function showTarget() {
    const target = $('input[name="target"]:checked').value;
    for (const name of ['LOCAL', 'PVC', 'S3']) $(`#target-${name.toLowerCase()}-fields`).hidden = name !== target;
  }

  async function showPreview() {
    const repoId = $('#repo').value.trim();
    const revision = $('#revision').value.trim() || null;
    const key = `${repoId}@${revision ?? ''}`;
    if (key === previewed) return;
    previewed = key;
    $('#local-path').placeholder = localDefault(repoId) || '<allowed root>/<repo>';
    if (!repoId) {
      preview.hidden = true;
      return;
    }
    const mine = ++sequence;
    preview.hidden = false;
    preview.dataset.state = 'loading';
    fill(preview, 'Looking up ', repoId, ' on the hub…');
    try {
      const data = await ctx.request(HuggingFaceModel, { repoId, revision });
      if (!alive || mine !== sequence) return;
      const failure = unionError(data.huggingFaceModel, 'HuggingFaceModel');
      if (failure) {
        preview.dataset.state = 'error';
        fill(preview, `${failure.type}: ${failure.message}`);
        return;
      }
      preview.dataset.state = 'ready';
      renderPreview(preview, data.huggingFaceModel);
      const fit = await ctx.request(GpuFit, { repoId, revision }).then(
        (answer) => answer.gpuFit,
        (error) => ({ __typename: 'Error', errorMessage: error.message }),
      );
      if (alive && mine === sequence) renderFit(preview, fit);
    } catch (error) {
      if (!alive || mine !== sequence) return;
      preview.dataset.state = 'error';
      fill(preview, error.message);
    }
  }

  form.addEventListener('change', (event) => {
    if (event.target.name === 'kind') showKind();
    if (event.target.name === 'target') showTarget();
  });
  $('#repo').addEventListener('input', () => {
    clearTimeout(timer);
    $('#local-path').placeholder = localDefault($('#repo').value.trim()) || '<allowed root>/<repo>';
    if (REPO_ID.test($('#repo').value.trim())) timer = setTimeout(showPreview, PREVIEW_DELAY_MS);
  });
  $('#repo').addEventListener('blur', () => {
    clearTimeout(timer);
    showPreview();
  });
  $('#revision').addEventListener('blur', showPreview);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const submit = $('#add-submit');
    submit.disabled = true;
    try {
      const data = await ctx.request(CreateModel, { input: formInput(form, localDefault) });
      if (!alive) return;
      const failure = reportResult(form, data.createModel, 'Model');
      if (failure) return;
      for (const secret of form.querySelectorAll('input[type="password"]')) secret.value = '';
      const model = data.createModel;
      ctx.flash(
        model.source.accessMode === 'LOCAL'
          ? `Added ${model.name}; downloading its weights`
          : `Added ${model.name}${model.source.hasToken ? ' (its API key is stored and will not be shown again)' : ''}`,
      );
      ctx.navigate(toHash('model', model.id));
    } catch (error) {
      if (alive) showError(form, { type: 'Error', message: error.message, field: null });
    } finally {
      if (alive) submit.disabled = !ctx.canEdit;
    }
  });

  $('#add-submit').disabled = !ctx.canEdit;
  if (!ctx.canEdit) formMessage(form, 'Adding models needs the editor role.', 'warn');
  $('#repo').focus();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
