// The mutations on one model that both the models table and the model's page offer: start and
// stop its inference, cancel and retry its download, delete it (after confirmAction). Each
// resolves to `{ error, result }`: `error` is the union error (`{type, message, field}`) or a
// transport failure as `{type: 'Error', message}`, null on success.

import CancelDownload from '@operations/CancelDownload.graphql';
import DeleteModel from '@operations/DeleteModel.graphql';
import RetryDownload from '@operations/RetryDownload.graphql';
import StartInference from '@operations/StartInference.graphql';
import StopInference from '@operations/StopInference.graphql';
import { confirmAction, unionError } from './forms.js';

async function attempt(run, expected) {
  try {
    const result = await run();
    const expectedTypes = Array.isArray(expected) ? expected : [expected];
    const error = expectedTypes.includes(result?.__typename) ? null : unionError(result, expectedTypes[0]);
    return { error, result };
  } catch (error) {
    return { error: { type: 'Error', message: error.message, field: null }, result: null };
  }
}

export function modelActions(ctx) {
  return {
    /** `startInference` with `input` (null: the defaults); `dryRun` writes nothing. */
    async start(model, input = null, dryRun = false) {
      const outcome = await attempt(
        async () => (await ctx.request(StartInference, { modelId: model.id, input, dryRun })).startInference,
        'InferencePayload',
      );
      if (!outcome.error && !outcome.result.started && !dryRun) {
        outcome.note = { text: outcome.result.message ?? 'not started', kind: 'warn' };
      }
      return outcome;
    },
    stop: (model) =>
      attempt(async () => (await ctx.request(StopInference, { modelId: model.id })).stopInference, 'Inference'),
    cancel: (model) =>
      attempt(async () => (await ctx.request(CancelDownload, { modelId: model.id })).cancelDownload, 'Weights'),
    retry: (model) =>
      attempt(async () => (await ctx.request(RetryDownload, { modelId: model.id })).retryDownload, [
        'Weights',
        'Model',
      ]),
    /** Asks first; resolves to null when the operator cancelled. */
    async remove(model) {
      const sure = await confirmAction(
        `Delete ${model.name}? Its inference stops; its downloaded weights stay until no model uses them.`,
        { confirm: 'Delete model', title: `Delete ${model.name}` },
      );
      if (!sure) return null;
      return attempt(async () => (await ctx.request(DeleteModel, { id: model.id })).deleteModel, 'DeletedModel');
    },
  };
}
