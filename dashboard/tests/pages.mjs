// The Cluster, Storage, API keys and Playground pages in headless Chromium (Debian's, driven by
// playwright-core), each doing its main job against a real modelplane.
//
//   MODELPLANE_TOKEN=<admin jwt> PAGES_EXPECT='{...}' node dashboard/tests/pages.mjs \
//       --url http://127.0.0.1:PORT --page cluster|storage|keys|playground --artifacts tests/artifacts
//
// tests/test_dashboard_pages.py prepares the server (nodes, a served model) and passes what the
// page should show in PAGES_EXPECT. A line `STEP <name>` asks the Python side to change
// something the page cannot (a pod bound to a node); the script then waits for the page to
// show it without a reload. Changes this script can make itself (a new download, stopping an
// inference) it makes over GraphQL directly, not through the page.
//
// Prints one JSON summary line on success; exits 1 with the reason otherwise (and a
// `dashboard-<page>-failure.png`). The token is read from the environment and never printed.

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { check, Failure, graphqlClient, logger, runScript, scriptOptions, until } from './kit.mjs';

const { options, token } = scriptOptions('pages', { caseOption: 'page', timeout: 120 });
const expect = JSON.parse(process.env.PAGES_EXPECT ?? '{}');
const shot = (name) => path.join(options.artifacts, `dashboard-${name}.png`);

const log = logger('pages');

/** A GraphQL request straight to modelplane (not through the page). */
const graphql = graphqlClient(options.url, token);

/**
 * Runs `act` (which makes the page ask for a confirmation: forms.js's modal dialog), answers
 * it (`accept` or not) and returns the question's text.
 */
async function confirming(page, act, accept) {
  await act();
  const dialog = page.locator('dialog.confirm[open]');
  await dialog.waitFor({ timeout: 5_000 });
  const text = await dialog.locator('#confirm-text').innerText();
  check(
    (await page.evaluate(() => document.activeElement?.dataset.confirm)) === 'cancel',
    'the confirmation does not start on Cancel',
  );
  await dialog.locator(`button[data-confirm="${accept ? 'confirm' : 'cancel'}"]`).click();
  await dialog.waitFor({ state: 'detached', timeout: 5_000 });
  return text;
}

/** Presses Tab until `selector` has the focus (at most `limit` times); returns the count. */
async function tabTo(page, selector, limit = 60) {
  for (let presses = 1; presses <= limit; presses += 1) {
    await page.keyboard.press('Tab');
    if (await page.evaluate((s) => document.activeElement?.matches(s) ?? false, selector)) return presses;
  }
  throw new Failure(`Tab never reached ${selector}`);
}

async function focused(page) {
  return page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName);
}

// ---- Cluster ------------------------------------------------------------------------------

async function clusterPage(page) {
  const body = page.locator('[data-page="cluster"] .ops-body[data-runtime="kubernetes"]');
  await body.waitFor({ timeout: 15_000 });
  const a100 = page.locator('[data-section="gpu-types"] tr[data-gpu-type="NVIDIA-A100-SXM4-80GB"]');
  await a100.waitFor({ timeout: 10_000 });
  const free = async () => Number(await a100.locator('[data-col="free"]').innerText());
  const allocatable = Number(await a100.locator('[data-col="allocatable"]').innerText());
  check(allocatable === 16, `A100 allocatable ${allocatable}, wanted 16`);
  const freeBefore = await free();
  const namespace = await page.locator('[data-fact="namespace"] dd').innerText();
  check(namespace === expect.namespace, `namespace shown ${namespace}`);
  const version = await page.locator('[data-fact="kubernetes"] dd').innerText();
  check(/^v1\./.test(version), `Kubernetes version shown ${version}`);
  const mine = await page
    .locator('[data-section="nodes"] tr[data-node]')
    .evaluateAll((rows, prefix) => rows.filter((r) => r.dataset.node.startsWith(prefix)).map((r) => r.innerText), expect.prefix);
  check(mine.length === 3, `nodes shown: ${mine}`);
  check(mine.some((text) => text.includes('CORDONED')), `the cordoned node is not shown as such: ${mine}`);
  const found = await page
    .locator('[data-section="integrations"] li[data-found="true"]')
    .evaluateAll((items) => items.map((li) => li.dataset.integration));
  check(found.length === 1 && found[0] === 'kuberay', `integrations found: ${found}`);
  const problems = await page.locator('[data-section="problems"]').innerText();
  check(/^None/.test(problems), `problems: ${problems}`);
  check((await page.locator('[data-section="local-note"]').count()) === 0, 'a kubernetes cluster is called local');
  await page.mouse.move(0, 0);
  await page.screenshot({ path: shot('cluster'), fullPage: true });

  log(`A100: ${freeBefore} of ${allocatable} free; asking for a pod of 2 GPUs on an A100 node`);
  console.log('STEP pod');
  const started = Date.now();
  await until('the free A100 GPUs to drop by 2', async () => (await free()) === freeBefore - 2, 40, 250);
  log(`the page showed ${freeBefore - 2} free ${((Date.now() - started) / 1000).toFixed(1)} s later, without a reload`);
  return { freeA100: [freeBefore, freeBefore - 2], integrationsFound: found };
}

// ---- Storage ------------------------------------------------------------------------------

const CREATE_MODEL = `mutation($input: CreateModelInput!) { createModel(input: $input) {
  __typename ... on Model { id weights { id } } ... on UserError { message } } }`;

async function storagePage(page) {
  const rows = page.locator('#weights-rows');
  const served = rows.locator(`tr[data-weights-id="${expect.servedWeightsId}"]`);
  await served.waitFor({ timeout: 15_000 });
  check((await served.getAttribute('data-state')) === 'READY', 'the served weights are not READY');
  const link = served.locator(`[data-col="models"] a[href="#/models/${expect.servedModelId}"]`);
  check((await link.count()) === 1, 'the weights do not link to the model using them');
  const usage = page.locator(`[data-section="usage"] .ops-usage[data-root="${expect.root}"]`);
  await usage.waitFor({ timeout: 5_000 });
  const usageText = await usage.innerText();
  check(/[1-9][\d.]* [kMG]?B of weights/.test(usageText), `the usage shows no weights: ${usageText}`);

  log('creating a second download over GraphQL; it must appear live');
  const root = `${expect.root}/org-a/tiny-org--sharded-model`;
  const created = await graphql(CREATE_MODEL, {
    input: { source: { url: 'tiny-org/sharded-model', accessMode: 'LOCAL' }, downloadTarget: { local: { localPath: root } } },
  });
  check(created.createModel.__typename === 'Model', `createModel: ${JSON.stringify(created.createModel)}`);
  const fresh = rows.locator('tr', { hasText: 'tiny-org/sharded-model' });
  await fresh.waitFor({ timeout: 15_000 });
  await until('the new weights to be READY on the page', async () => (await fresh.getAttribute('data-state')) === 'READY', 30, 200);
  const freshId = await fresh.getAttribute('data-weights-id');
  const count = async () => Number(await page.locator('[data-page="storage"] h3 .count').innerText());
  check((await count()) === 2, `the count says ${await count()}`);

  log('Delete on the served weights, dismissed: nothing is sent');
  const deletions = [];
  page.on('request', (request) => {
    if ((request.postData() ?? '').includes('mutation DeleteWeights')) deletions.push(request.postDataJSON().variables);
  });
  const question = await confirming(page, () => served.locator('button[data-action="delete"]').click(), false);
  check(question.includes('tiny-org/tiny-model'), `the question does not name the weights: ${question}`);
  check(deletions.length === 0, 'a dismissed delete was sent');

  log('Delete on the served weights, confirmed: refused in the row');
  await confirming(page, () => served.locator('button[data-action="delete"]').click(), true);
  const refusal = served.locator('.field-error[data-field="force"]');
  await refusal.waitFor({ timeout: 15_000 });
  const refusalText = await refusal.locator('.refusal').innerText();
  check(deletions.length === 1 && deletions[0].force === false, `deletions sent: ${JSON.stringify(deletions)}`);
  check(/ConflictError: .*uses these weights/.test(refusalText), `the refusal: ${refusalText}`);
  check((await refusal.locator('button[data-action="force"]').count()) === 1, 'no "Delete anyway" next to the refusal');

  log('Delete on the unused weights, confirmed: gone without a reload');
  await confirming(page, () => fresh.locator('button[data-action="delete"]').click(), true);
  await rows.locator(`tr[data-weights-id="${freshId}"]`).waitFor({ state: 'detached', timeout: 20_000 });
  await until('the count to say 1', async () => (await count()) === 1, 10);
  check((await served.locator('.field-error[data-field="force"]').count()) === 1, 'the refusal vanished with the reload');
  await page.mouse.move(0, 0);
  await page.screenshot({ path: shot('storage'), fullPage: true });

  log('the Cluster page of the local runtime');
  await page.evaluate(() => {
    window.location.hash = '#/cluster';
  });
  const note = page.locator('[data-page="cluster"] [data-section="local-note"]');
  await note.waitFor({ timeout: 10_000 });
  const noteText = await note.innerText();
  check(noteText.startsWith('Local runtime: no cluster.'), `the local note: ${noteText}`);
  const runtime = await page.locator('[data-fact="runtime"] dd').innerText();
  check(runtime === 'local processes', `runtime shown ${runtime}`);
  await page.screenshot({ path: shot('cluster-local'), fullPage: true });
  return { deletedWeightsId: freshId, refusal: refusalText };
}

// ---- API keys -----------------------------------------------------------------------------

async function keysPage(page, context) {
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(options.url).origin });
  const form = page.locator('#key-form');
  await form.waitFor({ timeout: 15_000 });
  await page.locator('#key-rows').waitFor({ state: 'attached' });
  check((await page.getByLabel('Name', { exact: true }).getAttribute('id')) === 'key-name', 'the name field has no label');
  check((await page.getByLabel('Role', { exact: true }).getAttribute('id')) === 'key-role', 'the role field has no label');

  log('keyboard only: Tab to the name, a blank name is refused next to the field');
  await page.locator('body').focus();
  const presses = await tabTo(page, '#key-name');
  await page.keyboard.type('   ');
  await page.keyboard.press('Enter');
  const refused = page.locator('.field:has(#key-name) .field-error');
  await refused.waitFor({ timeout: 10_000 });
  const refusedText = await refused.innerText();
  check(/^ValidationError: /.test(refusedText), `the refusal: ${refusedText}`);
  check((await focused(page)) === 'key-name', `the focus left the refused field: ${await focused(page)}`);

  await page.keyboard.press('Control+A');
  await page.keyboard.type('ci-bot');
  await page.keyboard.press('Tab');
  check((await focused(page)) === 'key-role', `Tab from the name went to ${await focused(page)}`);
  await page.keyboard.press('ArrowDown'); // viewer → editor
  await page.keyboard.press('Tab');
  check((await focused(page)) === 'key-submit', `Tab from the role went to ${await focused(page)}`);
  await page.keyboard.press('Enter');

  const secret = page.locator('#key-secret');
  await secret.waitFor({ timeout: 10_000 });
  const key = await secret.inputValue();
  check(key.length > 20, 'no key shown');
  check((await focused(page)) === 'key-copy', `the focus is not on Copy: ${await focused(page)}`);
  check(!(await page.locator('.field-error').count()), 'the refusal stayed after a good create');
  await page.keyboard.press('Enter');
  await page.locator('.ops-secret', { hasText: 'Copied.' }).waitFor({ timeout: 5_000 });
  const clipboard = await page.evaluate(() => navigator.clipboard.readText());
  check(clipboard === key, 'the clipboard does not hold the key');
  const row = page.locator('#key-rows tr', { hasText: 'ci-bot' });
  await row.waitFor({ timeout: 10_000 });
  const keyId = await row.getAttribute('data-key-id');
  const rowText = await row.innerText();
  check(rowText.includes('editor') && rowText.includes('active'), `the row: ${rowText}`);
  check(!rowText.includes(key), 'the listing shows the secret');
  const prefix = (await row.locator('td.mono').innerText()).replace('…', '');
  check(key.startsWith(prefix), `the prefix ${prefix} is not the key's`);
  const models = await fetch(new URL('/v1/models', options.url), { headers: { authorization: `Bearer ${key}` } });
  check(models.status === 200, `the new key is refused by /v1/models: ${models.status}`);
  await page.mouse.move(0, 0);
  await page.screenshot({ path: shot('keys'), fullPage: true });

  log('Done forgets the secret; it is not shown again after leaving the page either');
  await page.keyboard.press('Tab');
  check((await focused(page)) === 'key-done', `Tab from Copy went to ${await focused(page)}`);
  await page.keyboard.press('Enter');
  check(!(await page.content()).includes(key), 'the secret is still in the page after Done');
  await page.evaluate(() => {
    window.location.hash = '#/cluster';
  });
  await page.locator('[data-page="cluster"]').waitFor({ timeout: 10_000 });
  await page.evaluate(() => {
    window.location.hash = '#/keys';
  });
  await row.waitFor({ timeout: 10_000 });
  check(!(await page.content()).includes(key), 'the secret is shown again');
  check(!JSON.stringify(await page.evaluate(() => ({ ...localStorage }))).includes(key), 'the secret is in local storage');

  log('Revoke, confirmed: the row leaves, the key is refused');
  const question = await confirming(page, () => row.locator('button[data-action="revoke"]').click(), true);
  check(question.includes('ci-bot'), `the question: ${question}`);
  await row.waitFor({ state: 'detached', timeout: 10_000 });
  await page.locator('#keys-revoked').check();
  const revoked = page.locator(`#key-rows tr[data-key-id="${keyId}"][data-revoked="true"]`);
  await revoked.waitFor({ timeout: 10_000 });
  const after = await fetch(new URL('/v1/models', options.url), { headers: { authorization: `Bearer ${key}` } });
  check(after.status === 401, `the revoked key is answered ${after.status}`);
  return { keyId, refusedName: refusedText, tabsToName: presses };
}

// ---- Playground ---------------------------------------------------------------------------

const STOP_INFERENCE = `mutation($modelId: ID!) { stopInference(modelId: $modelId) { __typename } }`;

async function playgroundPage(page) {
  const select = page.locator('#chat-model');
  await until('the running model in the list', async () => (await select.locator('option').allInnerTexts()).includes(expect.model), 15);
  check(
    (await page.getByLabel('Running model').getAttribute('id')) === 'chat-model' &&
      (await page.getByLabel('Message').getAttribute('id')) === 'chat-input',
    'the chat fields have no labels',
  );

  log('keyboard only: Tab to the model, then to the message; Enter sends');
  await page.locator('body').focus();
  await tabTo(page, '#chat-model');
  await tabTo(page, '#chat-input', 10);
  await page.evaluate(() => {
    // Record every text the answer shows while it streams.
    window.partials = [];
    new MutationObserver(() => {
      const answer = document.querySelector('#chat-log li[data-role="assistant"]:last-child .ops-chat-text');
      const text = answer?.firstChild?.textContent ?? '';
      if (text && text !== window.partials.at(-1)) window.partials.push(text);
    }).observe(document.querySelector('#chat-log'), { childList: true, subtree: true, characterData: true });
  });
  await page.keyboard.type('hello there');
  await page.keyboard.press('Enter');
  const answer = page.locator('#chat-log li[data-role="assistant"]').last();
  await until('the answer to finish', async () => (await answer.getAttribute('data-state')) === 'done', 30);
  const text = await answer.locator('.ops-chat-text').innerText();
  const partials = await page.evaluate(() => window.partials);
  const ttft = await answer.locator('[data-figure="ttft"]').innerText();
  const tps = await answer.locator('[data-figure="tps"]').innerText();
  const tokens = await answer.locator('[data-figure="tokens"]').innerText();
  const ttftSeconds = Number(/first token ([\d.]+) s/.exec(ttft)?.[1]);
  const tokensPerSecond = Number(/([\d.]+) tokens\/s/.exec(tps)?.[1]);
  check(Number.isFinite(ttftSeconds) && Number.isFinite(tokensPerSecond), `figures: ${ttft} | ${tps}`);
  log(`answer "${text}" in ${partials.length} steps; ${ttft}, ${tps}, ${tokens}`);
  await page.mouse.move(0, 0);
  await page.screenshot({ path: shot('playground'), fullPage: true });

  log('Stop while it streams: the answer ends where it was');
  await page.fill('#chat-input', 'stop me please');
  await page.keyboard.press('Enter');
  const stopping = page.locator('#chat-log li[data-role="assistant"]').last();
  await until('the first words of the answer', async () => (await stopping.locator('.ops-chat-text').innerText()).startsWith('You'), 10, 20);
  await page.click('#chat-stop');
  await until('the answer to stop', async () => (await stopping.getAttribute('data-state')) === 'stopped', 5, 20);
  const cut = (await stopping.locator('.ops-chat-text').innerText()).split('\n')[0];
  check(!cut.includes('Bye'), `the stopped answer went on: ${cut}`);
  check(await page.locator('#chat-send').isEnabled(), 'Send stays disabled after Stop');

  log('a bad API key: a plain 401');
  await page.fill('#chat-key', 'mp_not-a-key');
  await page.fill('#chat-input', 'are you there?');
  await page.click('#chat-send');
  const failed = page.locator('#chat-log li[data-role="assistant"][data-state="failed"]').last();
  await failed.waitFor({ timeout: 10_000 });
  const unauthorised = await failed.locator('.field-error').innerText();
  check(/^401 /.test(unauthorised), `the failure: ${unauthorised}`);
  await page.fill('#chat-key', '');
  await page.locator('#chat-key').dispatchEvent('change');

  log('the engine fails: its 500 is shown as it said it');
  await page.fill('#chat-input', 'please fail');
  await page.click('#chat-send');
  const broken = page.locator('#chat-log li[data-role="assistant"][data-state="failed"]').nth(1);
  await broken.waitFor({ timeout: 10_000 });
  const engineFailure = await broken.locator('.field-error').innerText();
  check(/^500 /.test(engineFailure), `the failure: ${engineFailure}`);
  await page.screenshot({ path: shot('playground-errors'), fullPage: true });

  log('the inference stopped over GraphQL: the list empties live');
  const stopped = await graphql(STOP_INFERENCE, { modelId: expect.modelId });
  check(stopped.stopInference.__typename === 'Inference', `stopInference: ${stopped.stopInference.__typename}`);
  await until('the model to leave the list', async () => (await select.locator('option').count()) === 0, 30, 200);
  const note = await page.locator('#chat-models-note').innerText();
  check(note.startsWith('No model is running'), `the note: ${note}`);
  check(await page.locator('#chat-send').isDisabled(), 'Send is enabled with no model');
  return { answer: text, partials, ttftSeconds, tokensPerSecond, tokens, unauthorised, engineFailure };
}

// ---- main ---------------------------------------------------------------------------------

const PAGES = { cluster: clusterPage, storage: storagePage, keys: keysPage, playground: playgroundPage };

async function run(browser) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    const text = message.text();
    // The 401 the playground test asks for is logged by Chromium as a failed resource.
    if (message.type() === 'error' && !text.startsWith('Failed to load resource')) pageErrors.push(text);
  });
  let loads = 0;
  page.on('load', () => {
    loads += 1;
  });
  log(`opening #/${options.page}`);
  await page.goto(`${options.url}/?token=${encodeURIComponent(token)}#/${options.page}`);
  await page.locator(`[data-page="${options.page}"]`).waitFor({ timeout: 15_000 });
  const summary = await PAGES[options.page](page, context);
  return { ...summary, pageErrors, loads };
}

async function main() {
  check(options.page in PAGES, `no such page ${options.page}`);
  await mkdir(options.artifacts, { recursive: true });
  await runScript({
    name: `pages --page ${options.page}`,
    timeoutSeconds: Number(options.timeout),
    failureShot: shot(`${options.page}-failure`),
    body: run,
  });
}

await main();
