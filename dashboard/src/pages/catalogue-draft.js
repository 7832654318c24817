// The Catalogue page's draft panel: write a new entry and send it back to the repository.
//
// 1. *Generate from the hub* (`generateCatalogEntry`: repo id, revision, engine, GPU type,
//    context length): the entry's YAML (metadata, the GPU fit and vLLM flags agreeing with it)
//    goes into the editor, with the fit's summary.
// 2. *Check* (`previewCatalogEntry`): any entry text is parsed and validated without writing;
//    its problems are listed as `file:line field message`, else what it asks for.
// 3. *Propose* (`proposeCatalogEntry`: file path in the catalogue folder, branch, commit
//    message): the server validates it, commits it on a new branch and pushes; the branch and
//    commit are shown. Refusals stand next to the field they name (`yaml`, `path`, `branch`).

import GenerateCatalogEntry from '@operations/GenerateCatalogEntry.graphql';
import PreviewCatalogEntry from '@operations/PreviewCatalogEntry.graphql';
import ProposeCatalogEntry from '@operations/ProposeCatalogEntry.graphql';
import { fill, h } from '../dom.js';
import { clearErrors, formMessage, reportResult } from '../forms.js';
import { entryDetails, input, issuesList } from './manager-kit.js';

function checked(entry) {
  if (entry.valid) return h('div', {}, h('p.message', { dataset: { kind: 'ok' } }, 'Valid: installable once it is in the catalogue.'), entryDetails(entry));
  return issuesList(entry);
}

async function busy(button, work) {
  button.disabled = true;
  try {
    await work();
  } finally {
    button.disabled = false;
  }
}

function generateForm(ctx, editor, fitLine) {
  const form = h(
    'form.mgr-form#generate-form',
    { novalidate: true },
    h(
      'div.form-grid',
      {},
      input('generate-repo', 'Hub repo', { field: 'repoId', placeholder: 'Qwen/Qwen2.5-7B-Instruct', required: true }),
      input('generate-revision', 'Revision', { field: 'revision', placeholder: 'default branch' }),
      h(
        'div.field',
        {},
        h('label', { for: 'generate-engine' }, 'Engine'),
        h('select#generate-engine', { dataset: { field: 'engine' } }, h('option', { value: 'VLLM' }, 'vLLM'), h('option', { value: 'OLLAMA' }, 'Ollama')),
      ),
      input('generate-gpu', 'GPU type', { field: 'gpuType', placeholder: 'L4, A100-80GB…' }),
      input('generate-context', 'Context length', { field: 'contextLength', type: 'number', min: 1, placeholder: 'the model’s' }),
    ),
    h('div.form-actions', {}, h('button#generate-submit', { type: 'submit' }, 'Generate'), h('p.message', { dataset: { formMessage: '' }, role: 'alert' })),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = (id) => form.querySelector(`#${id}`).value.trim();
    const context = text('generate-context');
    const variables = {
      repoId: text('generate-repo'),
      revision: text('generate-revision') || null,
      engine: form.querySelector('#generate-engine').value,
      gpuType: text('generate-gpu') || null,
      contextLength: context === '' ? null : Number(context),
    };
    busy(form.querySelector('#generate-submit'), async () => {
      try {
        const data = await ctx.request(GenerateCatalogEntry, variables);
        const result = data.generateCatalogEntry;
        if (reportResult(form, result, 'GeneratedCatalogEntry')) return;
        editor.value = result.yaml;
        editor.dispatchEvent(new Event('input'));
        const fit = result.fit;
        fill(fitLine, h('strong', {}, fit.fits ? 'Fits: ' : 'Does not fit: '), fit.summary);
        fitLine.dataset.fits = String(fit.fits);
        formMessage(form, `Generated ${result.entry.name}: edit it below, check it, propose it.`, 'ok');
      } catch (error) {
        formMessage(form, error.message, 'error');
      }
    });
  });
  return form;
}

export function draftPanel(ctx) {
  const editor = h('textarea#draft-yaml.mono', { rows: 14, spellcheck: 'false', dataset: { field: 'yaml' }, placeholder: 'name: my-model\nsource:\n  repo: org/name\nengine: VLLM' });
  const fitLine = h('p.hint#draft-fit');
  const result = h('div#draft-result', { 'aria-live': 'polite' });
  const proposal = h('div#draft-proposal', { 'aria-live': 'polite' });
  const form = h(
    'form.mgr-form#draft-form',
    { novalidate: true },
    h('div.field', {}, h('label', { for: 'draft-yaml' }, 'Entry file'), editor),
    fitLine,
    h(
      'div.form-grid',
      {},
      input('draft-path', 'File path', { field: 'path', placeholder: 'my-model.yaml', hint: 'Inside the catalogue folder.' }),
      input('draft-branch', 'New branch', { field: 'branch', placeholder: 'catalog/<name>-<id>' }),
      input('draft-message', 'Commit message', { field: 'message', placeholder: 'Add <name>' }),
    ),
    h(
      'div.form-actions',
      {},
      h('button.ghost#draft-check', { type: 'button' }, 'Check'),
      h('button#draft-propose', { type: 'submit', disabled: !ctx.canEdit, title: ctx.canEdit ? null : 'needs the editor role' }, 'Propose'),
      h('p.message', { dataset: { formMessage: '' }, role: 'alert' }),
    ),
  );
  const text = (id) => form.querySelector(`#${id}`).value.trim();

  form.querySelector('#draft-check').addEventListener('click', (event) =>
    busy(event.currentTarget, async () => {
      try {
        const data = await ctx.request(PreviewCatalogEntry, { yaml: editor.value, path: text('draft-path') || null });
        const entry = data.previewCatalogEntry;
        if (reportResult(form, entry, 'CatalogEntry')) return;
        fill(result, checked(entry));
        result.dataset.valid = String(entry.valid);
      } catch (error) {
        formMessage(form, error.message, 'error');
      }
    }),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form.querySelector('#draft-propose'), async () => {
      clearErrors(form);
      try {
        const variables = { yaml: editor.value, path: text('draft-path'), branch: text('draft-branch') || null, message: text('draft-message') || null };
        const data = await ctx.request(ProposeCatalogEntry, variables);
        const proposed = data.proposeCatalogEntry;
        if (reportResult(form, proposed, 'CatalogProposal')) return;
        fill(
          proposal,
          h(
            'p.ops-note',
            { 'data-section': 'proposal', dataset: { branch: proposed.branch } },
            'Pushed ',
            h('span.mono', {}, proposed.path),
            ' on the new branch ',
            h('strong.mono', {}, proposed.branch),
            ` (commit ${proposed.commit.slice(0, 10)}, from ${proposed.baseCommit.slice(0, 10)}): open a pull request on the forge to merge it.`,
          ),
        );
      } catch (error) {
        formMessage(form, error.message, 'error');
      }
    });
  });
  editor.addEventListener('input', () => {
    fill(result);
    delete result.dataset.valid;
  });
  return h(
    'section.mgr-draft',
    { 'data-section': 'draft' },
    h('h3', {}, 'Draft an entry'),
    h('details.mgr-details#generate-panel', { open: true }, h('summary', {}, 'Generate from the hub'), generateForm(ctx, editor, fitLine)),
    form,
    result,
    proposal,
  );
}
