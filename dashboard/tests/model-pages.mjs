// Browser checks of the model pages against a real modelplane, one case per run:
//
//   MODELPLANE_TOKEN=<jwt> node dashboard/tests/model-pages.mjs --url http://127.0.0.1:PORT \
//       --case models|add|model [--model-id ID] [--artifacts tests/artifacts]
//
// - `models`: 1,000 seeded models (tests/test_dashboard_model_pages.py seeds them): the true
//   total, paging, search, a filter with a sort, all in the address (Back and reload), a model
//   created elsewhere appearing live, a delete confirmed with the keyboard.
// - `add`: the add form with the keyboard only: labels, focus order, radio groups, a union
//   error next to the field it names (and focus on it), the API key never shown again.
// - `model`: a model's page during a download: per-file progress, Cancel, Retry, Delete
//   after a confirmation (Escape first, which must keep the model).
//
// Prints one JSON summary line on success; exits 1 with the reason otherwise. The token is read
// from the environment and never printed.

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { check, Failure, graphqlClient, logger, runScript, scriptOptions, until } from './kit.mjs';

const { options, token } = scriptOptions('model-pages', { caseOption: 'case', timeout: 150, extra: { 'model-id': { type: 'string' } }, cases: 'models|add|model' });

const log = logger('model-pages');

/** A GraphQL call straight to modelplane (not through the page). */
const graphql = graphqlClient(options.url, token);

const shot = (name) => path.join(options.artifacts, name);

async function open(page, hash) {
  await page.goto(`${options.url}/?token=${encodeURIComponent(token)}${hash}`);
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 15_000 });
}

const rowNames = (page) => page.locator('#models tr').evaluateAll((rows) => rows.map((r) => r.dataset.name));
const total = async (page) => Number(await page.locator('#model-count').getAttribute('data-total'));
const params = (page) => new URLSearchParams(page.url().split('?')[1] ?? '');

/** Waits for the table to be drawn from a read that started after `after` (a load counter). */
async function loaded(page, after) {
  await until('the models table to be read again', async () => {
    const value = await page.locator('table.models').getAttribute('data-loaded');
    const busy = await page.locator('table.models').getAttribute('aria-busy');
    return value !== null && Number(value) > after && busy === null;
  }, 30, 50);
  return Number(await page.locator('table.models').getAttribute('data-loaded'));
}

async function modelsCase(page) {
  const started = Date.now();
  await open(page, '#/models');
  await page.locator('#models tr').first().waitFor({ timeout: 30_000 });
  const firstRender = Date.now() - started;
  let mark = await loaded(page, 0);
  check((await total(page)) === 1000, `the header says ${await total(page)} models, not 1,000`);
  check((await page.locator('#model-count').innerText()) === '1,000', 'the total is not shown as 1,000');
  let names = await rowNames(page);
  check(names.length === 50 && names[0] === 'seed-00999', `page 1: ${names.length} rows from ${names[0]}`);
  check((await page.locator('#models-range').innerText()) === '1–50 of 1,000', 'the range is wrong on page 1');
  log(`1,000 models: page 1 drawn ${firstRender} ms after navigation, 50 rows`);

  await page.click('#models-next');
  mark = await loaded(page, mark);
  names = await rowNames(page);
  check(names[0] === 'seed-00949' && names.length === 50, `page 2 starts at ${names[0]}`);
  check(params(page).get('page') === '2', `the address does not say page 2: ${page.url()}`);
  check((await page.locator('#models-range').innerText()) === '51–100 of 1,000', 'the range is wrong on page 2');

  await page.fill('#models-search', 'seed-0099');
  mark = await loaded(page, mark);
  names = await rowNames(page);
  check((await total(page)) === 10 && names.length === 10, `search: ${await total(page)} found, ${names.length} rows`);
  check(names.every((n) => n.startsWith('seed-0099')), `search rows: ${names}`);
  check(params(page).get('q') === 'seed-0099' && !params(page).has('page'), `search address: ${page.url()}`);
  log('search: 10 of 1,000; Back returns to page 2');

  await page.goBack();
  await until('page 2 again after Back', async () => params(page).get('page') === '2' && (await rowNames(page))[0] === 'seed-00949', 30);
  check((await page.locator('#models-search').inputValue()) === '', 'the search stayed after Back');

  await page.selectOption('#models-phase', 'FAILED');
  mark = await loaded(page, 0);
  await page.selectOption('#models-sort', 'name');
  await until('FAILED by name', async () => (await rowNames(page))[0] === 'seed-00002', 30);
  check((await total(page)) === 250, `FAILED: ${await total(page)}`);
  const filtered = page.url();
  await page.reload();
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 15_000 });
  await until('the same view after a reload', async () => (await rowNames(page))[0] === 'seed-00002', 30);
  check((await page.locator('#models-phase').inputValue()) === 'FAILED', 'the phase filter was lost on reload');
  check((await page.locator('#models-sort').inputValue()) === 'name', 'the sort was lost on reload');
  check(page.url() === filtered, `reload changed the address: ${page.url()}`);
  log(`phase FAILED by name: 250, from seed-00002, kept across a reload (${filtered.split('#')[1]})`);

  await page.click('#nav a[data-route="models"]');
  await until('the unfiltered first page', async () => (await rowNames(page))[0] === 'seed-00999', 30);
  const created = await graphql(
    `mutation { createModel(input: {source: {url: "https://api.example.com/v1", accessMode: REMOTE_API}, displayName: "Live arrival", name: "live-arrival"}) { __typename ... on Model { id } } }`,
  );
  check(created.createModel.__typename === 'Model', `could not create: ${JSON.stringify(created)}`);
  await until('the new model at the top, live', async () => (await rowNames(page))[0] === 'live-arrival', 20);
  await until('the total to say 1,001', async () => (await total(page)) === 1001, 10);
  log('a model created elsewhere appeared at the top and the total became 1,001 without a reload');

  await page.screenshot({ path: shot('dashboard-models.png'), fullPage: false });
  const row = page.locator('#models tr[data-name="live-arrival"]');
  await row.locator('button[data-action="delete"]').focus();
  await page.keyboard.press('Enter');
  const dialog = page.locator('dialog.confirm[open]');
  await dialog.waitFor({ timeout: 5_000 });
  check((await page.evaluate(() => document.activeElement.dataset.confirm)) === 'cancel', 'focus is not on Cancel');
  await page.screenshot({ path: shot('dashboard-models-confirm.png') });
  await page.keyboard.press('Tab');
  check((await page.evaluate(() => document.activeElement.dataset.confirm)) === 'confirm', 'Tab does not reach the confirm button');
  await page.keyboard.press('Enter');
  await until('the deleted row to go', async () => !(await rowNames(page)).includes('live-arrival'), 20);
  await until('the total back to 1,000', async () => (await total(page)) === 1000, 10);
  const after = await graphql(`{ model(id: "${created.createModel.id}") { id } }`);
  check(after.model === null, 'the model is still readable');

  await page.selectOption('#models-access', 'REMOTE_API');
  await until('no remote API models', async () => (await total(page)) === 0, 30);
  check((await page.locator('#models-empty').innerText()) === 'No models match.', 'no word that nothing matches');
  await page.selectOption('#models-access', 'LOCAL');
  await page.fill('#models-tag', 'family-3');
  await page.keyboard.press('Tab');
  await until('the family-3 tag', async () => (await total(page)) === 143, 30);
  await page.selectOption('#models-inference', 'NONE');
  await until('the inference filter applied', async () => params(page).get('inference') === 'NONE', 30);
  await until('143 LOCAL family-3 models without an inference', async () => (await total(page)) === 143, 30);
  check(params(page).get('tag') === 'family-3' && params(page).get('access') === 'LOCAL', `address: ${page.url()}`);
  log('access mode, tag and inference filters: 0 remote, 143 LOCAL family-3 models with no inference');
  return { firstRenderMs: firstRender, createdId: created.createModel.id };
}

/** Presses Tab until `stopId` has the focus; returns the ids (or names) focused on the way. */
async function tabOrder(page, stopId, limit = 40) {
  const order = [];
  for (let i = 0; i < limit; i += 1) {
    await page.keyboard.press('Tab');
    const id = await page.evaluate(() => document.activeElement.id || document.activeElement.name || document.activeElement.tagName);
    order.push(id);
    if (id === stopId) return order;
  }
  throw new Failure(`Tab never reached ${stopId}: ${order}`);
}

async function addCase(page) {
  await open(page, '#/add');
  check((await page.evaluate(() => document.activeElement.id)) === 'repo', 'the repo input does not have the focus');
  const unlabeled = await page.locator('#add-form input, #add-form select').evaluateAll((inputs) =>
    inputs.filter((i) => i.labels.length === 0).map((i) => i.id || i.name),
  );
  check(unlabeled.length === 0, `inputs without a label: ${unlabeled}`);

  // A Hugging Face repo to a PVC, which the local runtime refuses: the error sits by the claim.
  await page.keyboard.type('tiny-org/tiny-model');
  let order = await tabOrder(page, 'local-path');
  check(
    JSON.stringify(order) ===
      JSON.stringify(['revision', 'hub-token', 'allow-patterns', 'ignore-patterns', 'name', 'display-name', 'tags', 'description', 'target-local', 'local-path']),
    `focus order (Hugging Face): ${order}`,
  );
  await page.locator('#preview[data-state="ready"] .preview-fit').waitFor({ timeout: 15_000 });

  // A file pattern that matches nothing in the repo: refused next to it, nothing written.
  await page.focus('#allow-patterns');
  await page.keyboard.type('*.gguf');
  await page.keyboard.press('Enter');
  const patternError = page.locator('.field:has(#allow-patterns) .field-error');
  await patternError.waitFor({ timeout: 15_000 });
  const patternText = await patternError.innerText();
  check(/^ValidationError: .*\*\.gguf/.test(patternText), `the pattern refusal: ${patternText}`);
  check((await page.evaluate(() => document.activeElement.id)) === 'allow-patterns', 'focus did not move to the patterns');
  const none = await graphql('{ models(filter: {search: "tiny-org/tiny-model"}) { total } }');
  check(none.models.total === 0, `a refused model was written: ${JSON.stringify(none)}`);
  await page.fill('#allow-patterns', '');
  await page.focus('#local-path');
  await page.keyboard.press('Shift+Tab'); // back to the target radios
  await page.keyboard.press('ArrowRight'); // PVC
  check(await page.locator('#target-pvc-fields').isVisible(), 'the PVC fields did not appear');
  order = await tabOrder(page, 'pvc-claim');
  await page.keyboard.type('weights-claim');
  await page.keyboard.press('Enter');
  const claimError = page.locator('#target-pvc-fields .field:has(#pvc-claim) .field-error');
  await claimError.waitFor({ timeout: 15_000 });
  const claimText = await claimError.innerText();
  check(/^ValidationError: .*kubernetes/.test(claimText), `the PVC refusal: ${claimText}`);
  check((await page.evaluate(() => document.activeElement.id)) === 'pvc-claim', 'focus did not move to the claim');
  check((await page.locator('#pvc-claim').getAttribute('aria-invalid')) === 'true', 'the claim is not marked invalid');
  const describedBy = await page.locator('#pvc-claim').getAttribute('aria-describedby');
  check(describedBy && describedBy.includes(await claimError.getAttribute('id')), 'the error does not describe the claim');
  await page.screenshot({ path: shot('dashboard-add.png'), fullPage: true });
  log(`PVC refused next to the claim (${claimText}); now a remote API with the keyboard`);

  // A remote API: choose it in the first radio group, fill in, submit with Enter.
  await page.focus('#kind-local');
  await page.keyboard.press('ArrowRight');
  check(await page.locator('#remote-url').isVisible(), 'the remote fields did not appear');
  check(await page.locator('#target-fields').isHidden(), 'the download target is offered for a remote API');
  order = await tabOrder(page, 'add-submit');
  check(
    JSON.stringify(order) === JSON.stringify(['remote-url', 'api-key', 'name', 'display-name', 'tags', 'description', 'cpu', 'memory', 'gpu', 'add-submit']),
    `focus order (remote API): ${order}`,
  );
  await page.focus('#remote-url');
  await page.keyboard.type('https://api.example.com/v1');
  await page.keyboard.press('Tab');
  const key = 'sk-never-shown-again-4242';
  await page.keyboard.type(key);
  await page.keyboard.press('Tab');
  await page.keyboard.type('keyboard-remote');
  await page.keyboard.press('Enter');
  const nameError = page.locator('.field:has(#display-name) .field-error');
  await nameError.waitFor({ timeout: 15_000 });
  check((await page.evaluate(() => document.activeElement.id)) === 'display-name', 'focus did not move to the display name');
  check((await page.locator('.field-error').count()) === 1, 'the PVC error stayed');
  await page.keyboard.type('Keyboard remote');
  await page.keyboard.press('Enter');
  await page.waitForURL(/#\/models\/[^/?]+$/, { timeout: 15_000 });
  const modelId = decodeURIComponent(page.url().split('#/models/')[1]);
  await page.locator('#model-facts [data-fact="key or token"]').waitFor({ timeout: 15_000 });
  const pageText = await page.locator('body').innerText();
  check(!pageText.includes(key), 'the API key is shown after submit');
  check((await page.locator('#model-facts [data-fact="key or token"] dd').innerText()).startsWith('stored'), 'the key is not said to be stored');
  await page.goBack();
  await page.locator('#add-form').waitFor();
  check((await page.locator('#api-key').inputValue()) === '', 'the API key is back in the form');
  const stored = await graphql(`{ model(id: "${modelId}") { name phase source { accessMode hasToken } } }`);
  check(stored.model.source.hasToken && stored.model.phase === 'READY', `stored: ${JSON.stringify(stored)}`);
  return { modelId, focusOrder: order, patternError: patternText, pvcError: claimText };
}

async function modelCase(page) {
  const id = options['model-id'];
  await open(page, `#/models/${encodeURIComponent(id)}`);
  const state = () => page.locator('#model-weights .weights-head').getAttribute('data-state').catch(() => null);
  const moving = () =>
    page.locator('#weights-files tr[data-path] .meter').evaluateAll((meters) =>
      meters.some((m) => Number(m.dataset.bytesDone) > 0 && Number(m.dataset.bytesDone) < Number(m.dataset.bytesTotal)),
    );
  await until('a file being written', moving, 30, 50);
  log('a file is being written; Cancel');
  await page.click('button[data-action="cancel"]');
  await until('CANCELLED on the page', async () => (await state()) === 'CANCELLED', 30);
  check(await page.locator('button[data-action="retry"]').isEnabled(), 'Retry is not offered after a cancel');
  check(await page.locator('button[data-action="cancel"]').isDisabled(), 'Cancel is still offered');
  log('cancelled live; Retry');
  await page.click('button[data-action="retry"]');
  await until('the download under way again', async () => ['PENDING', 'PULLING'].includes(await state()), 30);
  await until('a file being written again', moving, 30, 50);
  await page.screenshot({ path: shot('dashboard-model-retry.png'), fullPage: true });
  log('retried live; Delete, first answered with Escape');
  await page.click('button[data-action="delete"]');
  await page.locator('dialog.confirm[open]').waitFor({ timeout: 5_000 });
  await page.keyboard.press('Escape');
  await page.locator('dialog.confirm').waitFor({ state: 'detached', timeout: 5_000 });
  check(page.url().includes(`#/models/${id}`), 'Escape left the page');
  check((await graphql(`{ model(id: "${id}") { id } }`)).model !== null, 'Escape deleted the model');
  check((await page.evaluate(() => document.activeElement.dataset.action)) === 'delete', 'focus did not return to Delete');
  await page.click('button[data-action="delete"]');
  await page.locator('dialog.confirm[open] button[data-confirm="confirm"]').click();
  await page.waitForURL(/#\/models$/, { timeout: 15_000 });
  const flash = await page.locator('#flash').innerText();
  check(flash.startsWith('Deleted'), `no word of the deletion: ${flash}`);
  return { modelId: id };
}

const CASES = { models: modelsCase, add: addCase, model: modelCase };

async function main() {
  await mkdir(path.resolve(options.artifacts), { recursive: true });
  const run = CASES[options.case];
  check(run, `unknown case ${options.case}`);
  await runScript({
    name: `model-pages ${options.case}`,
    timeoutSeconds: Number(options.timeout),
    failureShot: shot(`dashboard-${options.case}-failure.png`),
    body: async (browser) => {
      const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1 });
      const page = await context.newPage();
      const pageErrors = [];
      page.on('pageerror', (error) => pageErrors.push(error.message));
      page.on('console', (message) => {
        if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) pageErrors.push(message.text());
      });
      const summary = await run(page);
      check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(' | ')}`);
      return { case: options.case, ...summary };
    },
  });
}

await main();
