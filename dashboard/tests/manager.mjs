// The model-manager pages in headless Chromium (Debian's, driven by playwright-core) against a
// real modelplane, one case per run:
//
//   MODELPLANE_TOKEN=<admin jwt> MANAGER_EXPECT='{...}' node dashboard/tests/manager.mjs \
//       --url http://127.0.0.1:PORT --case catalogue|adopt|alerts|prefetch|system --artifacts tests/artifacts
//
// - `catalogue`: configure the source (a loopback git server), see the entries with the invalid
//   one's problems (file:line field message), filter, install the valid one (a refused path next
//   to its field first) and follow the link to the new model; generate an entry from the hub,
//   check it and propose it on a new branch.
// - `adopt`: a force-pushed branch (the last good snapshot kept, FORCE_PUSHED shown) adopted by
//   an admin after a confirmation (a dismissed one sends nothing).
// - `alerts`: an S3 prefix with a quota and a 50 % threshold, OK; weights pre-fetched into it
//   through the page's form (S3 fields) reach READY live, then the location's ALERT badge
//   appears live; the weights deleted, the alert clears live.
// - `prefetch`: a pattern matching nothing refused next to the patterns field; the form with a
//   pattern, the weights appearing with progress, cancelled, retried and READY, all live.
// - `system`: the System page: versions, runtime, leases held here.
//
// tests/test_dashboard_manager.py prepares the servers and passes what the page should show in
// MANAGER_EXPECT. Prints one JSON summary line on success; exits 1 with the reason otherwise
// (and a `dashboard-<case>-failure.png`). The token is read from the environment, never printed.

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { check, logger, runScript, scriptOptions, until } from './kit.mjs';

const { options, token } = scriptOptions('manager', { caseOption: 'case', timeout: 150 });
const expect = JSON.parse(process.env.MANAGER_EXPECT ?? '{}');
const shot = (name) => path.join(options.artifacts, `dashboard-${name}.png`);

const log = logger('manager');

/** Runs `act` (which opens forms.js's confirmation), answers it and returns its text. */
async function confirming(page, act, accept = true) {
  await act();
  const dialog = page.locator('dialog.confirm[open]');
  await dialog.waitFor({ timeout: 5_000 });
  const text = await dialog.locator('#confirm-text').innerText();
  await dialog.locator(`button[data-confirm="${accept ? 'confirm' : 'cancel'}"]`).click();
  await dialog.waitFor({ state: 'detached', timeout: 5_000 });
  return text;
}

/** The union error shown in the `.field` of `input` (waits for it). */
async function fieldError(page, input) {
  const error = page.locator(`.field:has(${input}) .field-error`);
  await error.waitFor({ timeout: 15_000 });
  return error.innerText();
}

// ---- Catalogue ----------------------------------------------------------------------------

async function cataloguePage(page) {
  await page.locator('[data-section="unconfigured"]').waitFor({ timeout: 15_000 });
  log('configure the source');
  await page.fill('#catalog-url', expect.url);
  await page.fill('#catalog-branch', 'main');
  await page.fill('#catalog-folder', 'models');
  await page.fill('#catalog-username', expect.username);
  await page.fill('#catalog-password', expect.password);
  await page.click('#catalog-configure');
  const commit = page.locator('[data-fact="commit"] dd');
  await until('the synced commit', async () => (await commit.count()) && (await commit.innerText()) === expect.commit.slice(0, 10), 30);
  check((await page.locator('[data-fact="credential"] dd').innerText()).startsWith('stored'), 'the credential is not said to be stored');
  check(!(await page.content()).includes(expect.password), 'the password is in the page');
  check((await page.locator('[data-section="sync-error"]').getAttribute('data-kind')) === 'none', 'a sync error is shown');

  const rows = page.locator('#catalog-rows');
  const tiny = rows.locator('tr[data-entry="tiny"]');
  const broken = rows.locator('tr[data-entry="broken"]');
  await tiny.waitFor({ timeout: 10_000 });
  check((await tiny.getAttribute('data-valid')) === 'true', 'tiny is not valid');
  check((await broken.getAttribute('data-valid')) === 'false', 'broken is not invalid');
  const issues = await broken.locator('[data-section="issues"] li').allInnerTexts();
  log(`broken's problems: ${JSON.stringify(issues)}`);
  check(issues.some((text) => /^models\/broken\.yaml:4 engine /.test(text)), `no engine problem at line 4: ${issues}`);
  check(await broken.locator('button[data-action="install"]').isDisabled(), 'an invalid entry can be installed');

  log('filter: invalid only, then valid only (in the address)');
  await page.selectOption('#catalog-filter', 'false');
  await until('only the invalid entry', async () => (await rows.locator('tr[data-entry]').count()) === 1 && (await broken.count()) === 1);
  check(page.url().includes('valid=false'), `the filter is not in the address: ${page.url()}`);
  await page.selectOption('#catalog-filter', 'true');
  await until('only the valid entry', async () => (await rows.locator('tr[data-entry]').count()) === 1 && (await tiny.count()) === 1);

  log('details, then install: a path outside the allowed roots is refused next to the field');
  await tiny.locator('button[data-action="details"]').click();
  const flags = await page.locator('tr[data-open-for="tiny"] [data-fact="flags"] dd').innerText();
  check(flags.includes('--max-model-len=2048'), `the flags: ${flags}`);
  await tiny.locator('button[data-action="install"]').click();
  const form = page.locator('form.mgr-install[data-entry="tiny"]');
  await form.waitFor({ timeout: 5_000 });
  await page.fill('#install-name', 'tiny-from-catalogue');
  await page.fill('#install-local-path', '/etc/modelplane-nope');
  await page.click('#install-submit');
  const refusal = await fieldError(page, '#install-local-path');
  check(/^ValidationError: /.test(refusal), `the refusal: ${refusal}`);
  check((await page.evaluate(() => document.activeElement?.id)) === 'install-local-path', 'the focus is not on the refused field');
  await page.fill('#install-local-path', '');
  await page.click('#install-submit');
  const link = page.locator('#catalog-installed');
  await link.waitFor({ timeout: 15_000 });
  check((await link.innerText()) === 'tiny-from-catalogue', `the link: ${await link.innerText()}`);
  await page.mouse.move(0, 0);
  await page.selectOption('#catalog-filter', '');
  await rows.locator('tr[data-entry="broken"]').waitFor({ timeout: 10_000 });
  await broken.locator('[data-section="issues"]').scrollIntoViewIfNeeded();
  await page.screenshot({ path: shot('catalogue'), fullPage: true });

  log('the new model on its page');
  const modelHref = await link.getAttribute('href');
  await link.click();
  await page.locator('#page dd', { hasText: 'tiny-from-catalogue' }).first().waitFor({ timeout: 15_000 });
  check(page.url().endsWith(modelHref), `the address after the link: ${page.url()}`);
  const modelId = decodeURIComponent(modelHref.replace('#/models/', ''));

  log('generate from the hub, check, propose');
  await page.evaluate(() => {
    window.location.hash = '#/catalogue';
  });
  await page.locator('#generate-repo').waitFor({ timeout: 10_000 });
  await page.fill('#generate-repo', 'tiny-org/tiny-model');
  await page.fill('#generate-gpu', 'L4');
  await page.click('#generate-submit');
  await until('the generated YAML', async () => (await page.inputValue('#draft-yaml')).includes('tiny-org/tiny-model'), 20);
  const generated = await page.inputValue('#draft-yaml');
  await page.fill('#draft-path', 'generated/tiny-model.yaml');
  await page.click('#draft-check');
  await page.locator('#draft-result[data-valid="true"]').waitFor({ timeout: 10_000 });
  await page.fill('#draft-branch', 'main');
  await page.click('#draft-propose');
  const branchRefusal = await fieldError(page, '#draft-branch');
  check(/^ValidationError: /.test(branchRefusal), `proposing on main: ${branchRefusal}`);
  await page.fill('#draft-branch', '');
  await page.fill('#draft-message', 'Add the generated tiny model');
  await page.click('#draft-propose');
  const proposal = page.locator('[data-section="proposal"]');
  await proposal.waitFor({ timeout: 20_000 });
  const branch = await proposal.getAttribute('data-branch');
  await page.screenshot({ path: shot('catalogue-draft'), fullPage: true });
  return { modelId, issues, refusal, branchRefusal, branch, generated };
}

async function adoptPage(page) {
  const error = page.locator('[data-section="sync-error"][data-kind="FORCE_PUSHED"]');
  await error.waitFor({ timeout: 15_000 });
  const said = await error.innerText();
  check(said.includes('FORCE_PUSHED') && said.includes('last good snapshot'), `the sync error: ${said}`);
  check((await page.locator('#catalog-rows tr[data-entry="other"]').count()) === 1, 'the last good snapshot is not shown');
  log('adopt the rewritten branch: asked first, dismissed, then confirmed');
  const sent = [];
  page.on('request', (request) => {
    if ((request.postData() ?? '').includes('mutation RefreshCatalog')) sent.push(request.postDataJSON().variables);
  });
  await confirming(page, () => page.click('#catalog-accept'), false);
  check(sent.length === 0, 'a dismissed adoption was sent');
  const question = await confirming(page, () => page.click('#catalog-accept'), true);
  check(question.includes(expect.rewritten.slice(0, 10)), `the question: ${question}`);
  await until('the rewritten commit', async () => (await page.locator('[data-fact="commit"] dd').innerText()) === expect.rewritten.slice(0, 10), 20);
  check(sent.length === 1 && sent[0].acceptForcePush === true, `sent: ${JSON.stringify(sent)}`);
  await page.locator('[data-section="sync-error"][data-kind="none"]').waitFor({ timeout: 10_000 });
  await page.locator('#catalog-rows tr[data-entry="other"]').waitFor({ state: 'detached', timeout: 10_000 });
  return { question };
}

// ---- Storage: alerts and pre-fetch ----------------------------------------------------------

/** Fills the pre-fetch form's repo, patterns and target (local path or S3 fields). */
async function fillPrefetch(page, { repo, allow = '', local = null, s3 = null }) {
  const panel = page.locator('#prefetch-panel');
  if (!(await panel.evaluate((node) => node.open))) await panel.locator('summary').click();
  await page.fill('#prefetch-repo', repo);
  await page.fill('#prefetch-allow', allow);
  if (s3) {
    await page.check('#prefetch-target-s3');
    for (const [field, value] of Object.entries(s3)) await page.fill(`#prefetch-s3-${field}`, value);
  } else {
    await page.check('#prefetch-target-local');
    await page.fill('#prefetch-local-path', local ?? '');
  }
}

async function alertsPage(page) {
  const card = page.locator(`[data-section="usage"] .ops-usage[data-root="${expect.location}"]`);
  await card.waitFor({ timeout: 15_000 });
  check((await card.getAttribute('data-alerting')) === 'false', 'the empty prefix is alerting');
  const threshold = await card.locator('[data-col="threshold"]').innerText();
  check(threshold === 'alerts at 50 %', `the threshold: ${threshold}`);
  const mark = await card.locator('.mgr-threshold').evaluate((node) => node.style.left);
  check(mark === '50%', `the threshold mark at ${mark}`);

  log('pre-fetch into the S3 prefix through the form');
  await fillPrefetch(page, { repo: expect.repo, s3: expect.s3 });
  await page.click('#prefetch-submit');
  const row = page.locator('#weights-rows tr', { hasText: expect.repo });
  await row.waitFor({ timeout: 15_000 });
  check(!(await page.content()).includes(expect.s3.secret), 'the S3 secret is still in the page');
  const started = Date.now();
  await until('the weights READY', async () => (await row.getAttribute('data-state')) === 'READY', 60, 200);
  log(`READY ${((Date.now() - started) / 1000).toFixed(1)} s after the submit`);
  await until('the ALERT badge', async () => (await card.getAttribute('data-alerting')) === 'true' && (await card.locator('[data-alert="on"]').count()) === 1, 30, 100);
  const raised = (Date.now() - started) / 1000;
  // the ALERT event itself (storageAlerts), not only a read of the usage, reached the page
  const line = page.locator('[data-page="storage"] > p.message');
  const said = await until('the ALERT event in the message line', async () => {
    const text = await line.innerText();
    return /over its alert threshold of 50 %/.test(text) && text;
  }, 30);
  log(`the alert appeared ${raised.toFixed(1)} s after the submit, without a reload`);
  await page.mouse.move(0, 0);
  await card.scrollIntoViewIfNeeded();
  await page.screenshot({ path: shot('storage-alerts'), fullPage: true });

  log('delete the weights: the alert clears live');
  const weightsId = await row.getAttribute('data-weights-id');
  await confirming(page, () => row.locator('button[data-action="delete"]').click());
  const cleared = Date.now();
  await until('the alert to clear', async () => (await card.getAttribute('data-alerting')) === 'false' && (await card.locator('[data-alert="off"]').count()) === 1, 30, 100);
  log(`cleared ${((Date.now() - cleared) / 1000).toFixed(1)} s after the delete`);
  await until('the CLEAR event in the message line', async () => /back under its alert threshold/.test(await line.innerText()), 30);
  return { weightsId, raisedSeconds: raised, alertMessage: said };
}

async function prefetchPage(page) {
  await page.locator('#weights-rows').waitFor({ state: 'attached', timeout: 15_000 });
  log('a pattern matching nothing is refused next to the patterns field');
  await fillPrefetch(page, { repo: expect.repo, allow: '*.gguf' });
  await page.click('#prefetch-submit');
  const refused = await fieldError(page, '#prefetch-allow');
  check(/^ValidationError: .*matches no file/.test(refused), `the refusal: ${refused}`);
  check((await page.evaluate(() => document.activeElement?.id)) === 'prefetch-allow', 'the focus is not on the patterns');
  check((await page.locator('#weights-rows tr').count()) === 0, 'a refused pre-fetch left weights');

  log('pre-fetch with a pattern: it appears with progress');
  await page.fill('#prefetch-allow', '*.json, *.safetensors');
  await page.click('#prefetch-submit');
  const row = page.locator('#weights-rows tr', { hasText: expect.repo });
  await row.waitFor({ timeout: 15_000 });
  const weightsId = await row.getAttribute('data-weights-id');
  await until('progress in the row', async () => (await row.getAttribute('data-state')) === 'PULLING' && (await row.locator('[data-col="progress"]').count()) === 1, 30, 100);
  const progress = row.locator('[data-col="progress"] .sub');
  const moving = await until('bytes moving in the row', async () => {
    const text = (await progress.count()) ? await progress.innerText() : '';
    return !text.startsWith('0 B of') && text;
  }, 30, 100);
  log(`progress shown live: ${moving}`);
  const patterns = await row.locator('[data-col="patterns"]').innerText();
  check(patterns === 'only *.json, *.safetensors', `the patterns: ${patterns}`);
  await page.mouse.move(0, 0);
  await page.screenshot({ path: shot('prefetch'), fullPage: true });

  log('cancel (asked first), then retry: READY live');
  await confirming(page, () => row.locator('button[data-action="cancel"]').click());
  await until('CANCELLED', async () => (await row.getAttribute('data-state')) === 'CANCELLED', 20, 100);
  await row.locator('button[data-action="retry"]').click();
  await until('PENDING or PULLING again', async () => ['PENDING', 'PULLING'].includes(await row.getAttribute('data-state')), 20, 100);
  const started = Date.now();
  await until('READY', async () => (await row.getAttribute('data-state')) === 'READY', 90, 200);
  log(`READY ${((Date.now() - started) / 1000).toFixed(1)} s after the retry`);
  check((await row.locator('button[data-action="cancel"], button[data-action="retry"]').count()) === 0, 'READY weights offer cancel or retry');
  log('History: the cancelled attempt, then the one that finished');
  await row.locator('button[data-action="history"]').click();
  const history = page.locator(`tr[data-history-for="${weightsId}"] li[data-outcome]`);
  await history.first().waitFor({ timeout: 10_000 });
  const outcomes = await history.evaluateAll((items) => items.map((li) => li.dataset.outcome));
  log(`attempts: ${outcomes.join(', ')}; ${(await history.allInnerTexts()).join(' | ')}`);
  check(outcomes.includes('CANCELLED') && outcomes.at(-1) === 'READY', `the attempts: ${outcomes}`);
  await page.screenshot({ path: shot('prefetch-ready'), fullPage: true });
  return { weightsId, refused, patterns, outcomes };
}

// ---- System ---------------------------------------------------------------------------------

async function systemPage(page) {
  const body = page.locator('[data-page="system"] .ops-body[data-replica]');
  await body.waitFor({ timeout: 15_000 });
  const version = await page.locator('[data-fact="version"] dd').innerText();
  const runtime = await page.locator('[data-fact="runtime"] dd').innerText();
  const here = await page.locator('[data-section="leases"] tr[data-here="true"]').evaluateAll((rows) => rows.map((r) => r.dataset.lease));
  check(version === expect.version, `the version shown: ${version}`);
  check(runtime === 'local', `the runtime shown: ${runtime}`);
  await until('a lease held here', async () => {
    const held = await page.locator('[data-section="leases"] tr[data-here="true"]').count();
    if (!held) await page.click('[data-page="system"] .card-head button');
    return held;
  }, 30, 1000);
  await page.mouse.move(0, 0);
  await page.screenshot({ path: shot('system'), fullPage: true });
  const leases = await page.locator('[data-section="leases"] tr[data-here="true"]').evaluateAll((rows) => rows.map((r) => r.dataset.lease));
  return { version, runtime, leasesHere: leases.length ? leases : here };
}

// ---- main ---------------------------------------------------------------------------------

const CASES = {
  catalogue: [cataloguePage, 'catalogue'],
  adopt: [adoptPage, 'catalogue'],
  alerts: [alertsPage, 'storage'],
  prefetch: [prefetchPage, 'storage'],
  system: [systemPage, 'system'],
};

async function run(browser) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) pageErrors.push(message.text());
  });
  let loads = 0;
  page.on('load', () => {
    loads += 1;
  });
  const [test, route] = CASES[options.case];
  log(`opening #/${route}`);
  await page.goto(`${options.url}/?token=${encodeURIComponent(token)}#/${route}`);
  await page.locator(`[data-page="${route}"]`).waitFor({ timeout: 15_000 });
  const summary = await test(page, context);
  return { ...summary, pageErrors, loads };
}

async function main() {
  check(options.case in CASES, `no such case ${options.case}`);
  await mkdir(options.artifacts, { recursive: true });
  await runScript({
    name: `manager --case ${options.case}`,
    timeoutSeconds: Number(options.timeout),
    failureShot: shot(`${options.case}-failure`),
    body: run,
  });
}

await main();
