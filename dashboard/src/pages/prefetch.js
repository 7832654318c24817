// The Storage page's pre-fetch form: download a repo's weights (or a subset of its files)
// before any model uses them, with `downloadWeights` (repo, revision, download target, allow /
// ignore globs, hub token). Globs that match nothing, a target outside the allowed roots or a
// repo the hub does not know are refused before anything downloads: the refusal stands next to
// the field it names (`allowPatterns`, `downloadTarget.local.localPath`, `repo`…). The hub token
// and an S3 secret go out once and are cleared from their inputs.
//
// The new weights appear in the inventory at once (`onStarted` reads the page again) and move
// PENDING → PULLING (with progress) → READY live, through the page's WEIGHTS events.

import DownloadWeights from '@operations/DownloadWeights.graphql';
import { h } from '../dom.js';
import { formMessage, reportResult } from '../forms.js';
import { forgetSecrets, input, localPathFor, patternFields, readPatterns, readTarget, targetFields } from './manager-kit.js';

const PREFIX = 'prefetch';

export function prefetchForm(ctx, onStarted) {
  const form = h(
    'form.mgr-form#prefetch-form',
    { novalidate: true },
    h(
      'div.form-grid',
      {},
      input('prefetch-repo', 'Hub repo', { field: 'repo', placeholder: 'Qwen/Qwen2.5-7B-Instruct', required: true }),
      input('prefetch-revision', 'Revision', { field: 'revision', placeholder: 'default branch' }),
      input('prefetch-token', 'Hub token', { field: 'token', type: 'password', autocomplete: 'off', hint: 'Gated or private repos; else the server’s. Never shown again.' }),
      ...patternFields(PREFIX),
    ),
    targetFields(PREFIX, 'Empty: <first allowed root>/<repo>.'),
    h(
      'div.form-actions',
      {},
      h('button#prefetch-submit', { type: 'submit', disabled: !ctx.canEdit, title: ctx.canEdit ? null : 'needs the editor role' }, 'Pre-fetch'),
      h('p.message', { dataset: { formMessage: '' }, role: 'alert' }),
    ),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const repo = form.querySelector('#prefetch-repo').value.trim();
    const variables = {
      input: {
        repo,
        revision: form.querySelector('#prefetch-revision').value.trim() || null,
        token: form.querySelector('#prefetch-token').value || null,
        downloadTarget: readTarget(form, PREFIX, localPathFor(ctx, repo)),
        allowPatterns: readPatterns(form, `${PREFIX}-allow`),
        ignorePatterns: readPatterns(form, `${PREFIX}-ignore`),
      },
    };
    const button = form.querySelector('#prefetch-submit');
    button.disabled = true;
    try {
      const data = await ctx.request(DownloadWeights, variables);
      const weights = data.downloadWeights;
      if (!reportResult(form, weights, 'Weights')) {
        forgetSecrets(form);
        formMessage(form, `Pre-fetching ${weights.repoId} into ${weights.location} (${weights.id}).`, 'ok');
        onStarted(weights);
      }
    } catch (error) {
      formMessage(form, error.message, 'error');
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
