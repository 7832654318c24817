// End-to-end check of the dashboard in headless Chromium (Debian's, driven by playwright-core).
//
//   MODELPLANE_TOKEN=<jwt> node dashboard/tests/e2e.mjs --url http://127.0.0.1:PORT \
//       --artifacts tests/artifacts
//
// The browser reaches modelplane through a small TCP proxy started here, so the test can cut
// the page's WebSocket the way a network does: the proxy resets the TCP connections that
// carried a WebSocket upgrade, then refuses new upgrades until the download has finished on
// the server (checked over GraphQL directly, not through the page). The page cannot have seen
// the completion live; it must get it from the replay when it reconnects with `after: <last
// cursor>`. Nothing in the page is stubbed or hooked.
//
// It adds the model on `#/add` (hub preview, GPU fit), follows each file's progress on the
// model's page, then goes to the models table (no reload) where the socket is cut.
//
// Then it serves the model from its page: a start with 0 replicas refused next to the field, a
// dry run showing what would be created (and creating nothing), Start, the page following
// PENDING → … → RUNNING live, the phase timelines and the engine's log lines (modelplane must
// run with a `vllm` on PATH: tests/test_dashboard.py puts a stand-in there), then Stop and the
// page reaching STOPPED.
//
// Prints one JSON summary line on success; exits 1 with the reason otherwise. The token is
// read from the environment and never printed.

import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CHROMIUM, Failure, check, launchBrowser, logger, until } from './kit.mjs';

const REPO = 'tiny-org/tiny-model';

const { values: options } = parseArgs({
  options: {
    url: { type: 'string' },
    artifacts: { type: 'string', default: 'tests/artifacts' },
    timeout: { type: 'string', default: '90' },
  },
});
const token = process.env.MODELPLANE_TOKEN;
if (!options.url || !token) {
  console.error('usage: MODELPLANE_TOKEN=... node e2e.mjs --url http://127.0.0.1:PORT [--artifacts DIR]');
  process.exit(2);
}
const target = new URL(options.url);

/** Where a screenshot named `name` goes. */
function shotPath(name) {
  return path.join(options.artifacts, name);
}

const log = logger('e2e');

/** A TCP proxy to modelplane that can cut WebSocket connections and refuse new ones. */
function startProxy() {
  const pairs = new Set();
  let refuseWebSockets = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    const pair = { client, upstream, websocket: false };
    pairs.add(pair);
    const close = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    for (const socket of [client, upstream]) {
      socket.on('error', close);
      socket.on('close', close);
    }
    client.once('data', (first) => {
      client.pause();
      pair.websocket = /^upgrade:\s*websocket/im.test(first.toString('latin1'));
      if (pair.websocket && refuseWebSockets) {
        client.resetAndDestroy();
        close();
        return;
      }
      upstream.write(first);
      client.pipe(upstream);
      upstream.pipe(client);
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        /** Resets every open WebSocket connection; returns how many there were. */
        cutWebSockets() {
          let cut = 0;
          for (const pair of [...pairs]) {
            if (!pair.websocket) continue;
            pair.client.resetAndDestroy();
            pair.upstream.destroy();
            cut += 1;
          }
          return cut;
        },
        refuse(value) {
          refuseWebSockets = value;
        },
        close: () => new Promise((done) => server.close(done)),
      });
    });
  });
}

/** The model's phase read straight from modelplane (not through the page or the proxy). */
async function serverPhase(modelId) {
  const response = await fetch(new URL('/graphql', target), {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query: 'query($id: ID!) { model(id: $id) { phase weights { state } } }', variables: { id: modelId } }),
  });
  const body = await response.json();
  return body.data?.model ?? null;
}

async function run(browser, proxy) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    // The refused reconnection attempts show up as console errors; they are expected.
    const text = message.text();
    if (message.type() === 'error' && !text.includes('WebSocket') && !text.startsWith('Failed to load resource')) {
      pageErrors.push(text);
    }
  });
  page.on('response', (response) => {
    if (response.status() >= 400) pageErrors.push(`HTTP ${response.status()} for ${new URL(response.url()).pathname}`);
  });
  let loads = 0;
  page.on('load', () => {
    loads += 1;
  });

  log(`opening the add page through the proxy ${proxy.url}`);
  await page.goto(`${proxy.url}/?token=${encodeURIComponent(token)}#/add`);
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 15_000 });
  check(!page.url().includes('token'), 'the token was left in the address bar');
  check(
    (await page.evaluate(() => localStorage.getItem('modelplane.token'))) === token,
    'the token was not kept in local storage',
  );
  await page.evaluate(() => {
    // Record every label the connection indicator shows, however briefly.
    const label = document.querySelector('#connection .label');
    window.connectionHistory = [label.textContent];
    new MutationObserver(() => window.connectionHistory.push(label.textContent)).observe(label, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
  log('live; looking the repo up on the hub');

  await page.fill('#repo', REPO);
  await page.locator('#repo').blur();
  const preview = page.locator('#preview[data-state="ready"]');
  await preview.waitFor({ timeout: 15_000 });
  const previewText = await preview.innerText();
  check(previewText.includes(REPO), `the hub preview does not name the repo: ${previewText}`);
  const previewSize = await page.locator('#preview [data-fact="size"] dd').innerText();
  check(/\d/.test(previewSize), `the hub preview shows no size: ${previewSize}`);
  const placeholder = await page.locator('#local-path').getAttribute('placeholder');
  check(placeholder.endsWith(`/${REPO}`), `the local path does not default to <root>/<repo>: ${placeholder}`);
  const fit = page.locator('#preview .preview-fit');
  await fit.waitFor({ timeout: 15_000 });
  const fitText = await fit.innerText();
  check(/GPU fit \(vLLM\): (needs \d+ x |does not fit|no GPU type)/.test(fitText), `the preview shows no GPU fit: ${fitText}`);
  log(`preview fit: ${fitText}`);
  log(`preview shows ${previewSize}; default path ${placeholder}`);

  await page.click('#add-submit');
  await page.waitForURL(/#\/models\/[^/?]+$/, { timeout: 15_000 });
  const modelId = decodeURIComponent(page.url().split('#/models/')[1]);
  log(`created model ${modelId}; its page follows each file's progress`);

  const fileBars = () =>
    page.locator('#weights-files tr[data-path] .meter').evaluateAll((meters) =>
      meters.map((m) => [m.closest('tr').dataset.path, Number(m.dataset.bytesDone), Number(m.dataset.bytesTotal)]),
    );
  const seenFiles = [];
  await until(
    'two increasing per-file progress values on the model page',
    async () => {
      const bars = await fileBars();
      const moving = bars.find(([, done, total]) => done > 0 && done < total);
      if (moving && moving[1] !== seenFiles.at(-1)?.[1]) seenFiles.push(moving);
      return seenFiles.length >= 2;
    },
    30,
    50,
  );
  check(seenFiles[1][1] > seenFiles[0][1] || seenFiles[1][0] !== seenFiles[0][0], `file progress went backwards: ${seenFiles}`);
  const fileCount = (await fileBars()).length;
  check(fileCount >= 2, `the model page lists ${fileCount} files`);
  await page.screenshot({ path: shotPath('dashboard-model-progress.png'), fullPage: true });
  log(`per-file progress ${seenFiles.map((f) => `${f[0]}:${f[1]}`).join(' -> ')} over ${fileCount} files; to the models table`);

  await page.click('#nav a[data-route="models"]');
  const row = page.locator(`#models tr[data-model-id="${modelId}"]`);
  await row.waitFor({ timeout: 15_000 });
  const seen = [];
  await until(
    'the row to show the download under way',
    async () => {
      const meter = row.locator('.meter');
      if ((await meter.count()) === 0) {
        check((await row.getAttribute('data-phase')) !== 'READY', 'the download finished before the socket was cut');
        return false;
      }
      const done = Number(await meter.getAttribute('data-bytes-done'));
      const total = Number(await meter.getAttribute('data-bytes-total'));
      if (done > 0 && done < total && done !== seen.at(-1)) seen.push(done);
      return seen.length >= 1;
    },
    30,
    50,
  );
  check(await row.locator('button[data-action="start"]').isDisabled(), 'Start is enabled during the download');
  log(`the row shows ${seen[0]} bytes; cutting the WebSocket`);

  proxy.refuse(true);
  const cut = proxy.cutWebSockets();
  check(cut >= 1, 'there was no WebSocket to cut');
  await page.locator('#connection[data-state="reconnecting"]').waitFor({ timeout: 10_000 });
  log(`cut ${cut} WebSocket connection(s); the page is reconnecting; waiting for the server to finish`);

  await until('the download to finish on the server', async () => (await serverPhase(modelId))?.phase === 'READY', 60, 200);
  const phaseWhileCut = await row.getAttribute('data-phase');
  check(phaseWhileCut !== 'READY', 'the page saw READY while its WebSocket was cut');
  log(`READY on the server while the page shows ${phaseWhileCut}; letting the page reconnect`);

  proxy.refuse(false);
  const indicator = page.locator('#connection[data-state="resumed"]');
  await indicator.waitFor({ timeout: 20_000 });
  const resumedLabel = await indicator.innerText();
  const resumedMatch = /resumed after cursor (\d+)/.exec(resumedLabel);
  check(resumedMatch, `the indicator does not say where it resumed: ${resumedLabel}`);
  await page.locator(`#models tr[data-model-id="${modelId}"][data-phase="READY"]`).waitFor({ timeout: 20_000 });
  const downloadCell = await row.locator('td.download').innerText();
  check(downloadCell.includes('downloaded'), `the download cell does not show the completion: ${downloadCell}`);

  const history = await page.evaluate(() => window.connectionHistory);
  const reconnectingAt = history.indexOf('reconnecting…');
  const resumedAt = history.findIndex((label) => label.startsWith('resumed after cursor'));
  check(reconnectingAt >= 0 && resumedAt > reconnectingAt, `indicator history: ${JSON.stringify(history)}`);
  check(loads === 1, `the page was reloaded (${loads} loads)`);
  check((await row.locator('td.inference .badge').count()) === 0, 'the inference column pretends to know a phase');
  check(await row.locator('button[data-action="start"]').isEnabled(), 'Start is disabled on a READY model');
  check(await row.locator('button[data-action="stop"]').isDisabled(), 'Stop is enabled with nothing serving');
  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(' | ')}`);

  await page.mouse.move(0, 0);
  await page.screenshot({ path: shotPath('dashboard-models-resumed.png'), fullPage: true });
  log(`row READY after ${resumedMatch[0]}; screenshot dashboard-models-resumed.png`);

  const served = await serve(page, modelId);
  check(loads === 1, `the page was reloaded (${loads} loads)`);
  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(' | ')}`);
  return { modelId, progress: seen, files: seenFiles, resumedAfterCursor: resumedMatch[1], indicatorHistory: history, ...served };
}

/** On the model's page: a refused start, the dry run, Start, the timeline, the logs, Stop. */
async function serve(page, modelId) {
  await page.locator(`#models tr[data-model-id="${modelId}"] a.title`).click();
  const detail = page.locator(`#model-page[data-model-id="${modelId}"]`);
  await detail.locator('#model-facts [data-fact="phase"]').waitFor({ timeout: 10_000 });
  await page.evaluate(() => {
    // Record every inference phase the page shows, however briefly.
    window.inferencePhases = [];
    const element = document.querySelector('#model-page');
    const record = () => {
      const phase = element.dataset.inferencePhase;
      if (phase && phase !== window.inferencePhases.at(-1)) window.inferencePhases.push(phase);
    };
    new MutationObserver(record).observe(element, { attributes: true, attributeFilter: ['data-inference-phase'] });
  });

  log('on the model page; starting with 0 replicas must be refused next to the field');
  await page.fill('#start-replicas', '0');
  await page.click('#start-submit');
  const refusal = page.locator('#start-form .field:has(#start-replicas) .field-error');
  await refusal.waitFor({ timeout: 10_000 });
  const refusalText = await refusal.innerText();
  check(/^ValidationError: .*replicas/.test(refusalText), `the refusal is not next to the replicas: ${refusalText}`);
  check((await page.locator('#start-replicas').getAttribute('aria-invalid')) === 'true', 'replicas is not marked invalid');
  check((await detail.getAttribute('data-inference-phase')) === '', 'a refused start made an inference');
  await page.fill('#start-replicas', '');

  log(`refused (${refusalText}); the dry run shows what would be created`);
  await page.selectOption('#start-engine', 'VLLM');
  await page.click('#start-dry-run');
  const dryRun = page.locator('#dry-run:not([hidden])');
  await dryRun.waitFor({ timeout: 10_000 });
  const dryEngine = await dryRun.locator('[data-fact="engine"] dd').innerText();
  check(dryEngine === 'VLLM', `the dry run shows engine ${dryEngine}`);
  check((await page.locator('#start-form .field-error').count()) === 0, 'the refusal stayed after a good dry run');
  check((await serverPhase(modelId))?.phase === 'READY', 'the model changed');
  const afterDry = await detail.getAttribute('data-inference-phase');
  check(afterDry === '', `the dry run made an inference (${afterDry})`);

  log('dry run shown; Start');
  await page.click('#start-submit');
  await page.locator('#model-page[data-inference-phase="RUNNING"]').waitFor({ timeout: 30_000 });
  const pane = page.locator('#inference-pane');
  const timelinePhases = () =>
    pane.locator('#pane-timeline li').evaluateAll((items) => items.map((li) => li.dataset.phase));
  const running = await until(
    'the inference timeline to reach RUNNING',
    async () => {
      const phases = await timelinePhases();
      return phases.at(-1) === 'RUNNING' ? phases : null;
    },
    15,
  );
  check(running[0] === 'PENDING', `the timeline does not start with PENDING: ${running}`);
  const endpoint = await pane.locator('[data-fact="endpoint"] dd').innerText();
  check(/^http:\/\/127\.0\.0\.1:\d+\/v1$/.test(endpoint), `the page shows no endpoint: ${endpoint}`);
  const engine = await pane.locator('#pane-summary [data-fact="engine"] dd').innerText();
  check(engine === 'VLLM', `the page shows engine ${engine}`);
  const logs = await until(
    'a log line from the engine on the page',
    async () => {
      const text = await pane.locator('#pane-logs').innerText();
      return /loaded \d+ files/.test(text) ? text : null;
    },
    15,
    250,
  );
  check(await pane.locator('#start-form').isHidden(), 'the start form is shown while serving');
  const modelTimeline = await page.locator('#model-timeline li').evaluateAll((items) => items.map((li) => `${li.dataset.kind}:${li.dataset.phase}`));
  check(modelTimeline.includes('WEIGHTS:READY') && modelTimeline.includes('INFERENCE:RUNNING'), `the model timeline: ${modelTimeline}`);

  await page.mouse.move(0, 0);
  const shot = shotPath('dashboard-model.png');
  await page.screenshot({ path: shot, fullPage: true });
  log(`RUNNING (${running.join(' -> ')}) at ${endpoint}; screenshot ${shot}; clicking Stop`);

  await page.click('button[data-action="stop"]');
  await until('the page to show STOPPED', () => page.evaluate(() => window.inferencePhases.includes('STOPPED')), 30);
  const stopped = await until(
    'the inference timeline to reach STOPPED',
    async () => {
      const phases = await timelinePhases();
      return phases.at(-1) === 'STOPPED' ? phases : null;
    },
    30,
  );
  await until('Start to be offered again', () => page.locator('#start-submit').isVisible(), 30);
  const pagePhases = await page.evaluate(() => window.inferencePhases);
  check(
    pagePhases.indexOf('RUNNING') >= 0 && pagePhases.indexOf('RUNNING') < pagePhases.indexOf('STOPPED'),
    `the page's inference phases: ${pagePhases}`,
  );
  log(`STOPPED; the page showed ${pagePhases.join(' -> ')}`);
  return { inferencePhases: pagePhases, timeline: stopped, modelTimeline, logLines: logs.split('\n').length, endpoint };
}

async function main() {
  await mkdir(path.resolve(options.artifacts), { recursive: true });
  const proxy = await startProxy();
  let browser;
  try {
    browser = await launchBrowser();
  } catch (error) {
    await proxy.close();
    console.error(`cannot start Chromium at ${CHROMIUM} (make browser installs it): ${error.message}`);
    process.exit(1);
  }
  const watchdog = setTimeout(() => {
    console.error(`e2e: gave up after ${options.timeout} s`);
    process.exit(1);
  }, Number(options.timeout) * 1000);
  try {
    const summary = await run(browser, proxy);
    console.log(JSON.stringify({ ok: true, ...summary }));
  } catch (error) {
    console.error(`e2e failed: ${error instanceof Failure ? error.message : error.stack}`);
    const failureShot = shotPath('dashboard-failure.png');
    for (const context of browser.contexts()) {
      for (const page of context.pages()) await page.screenshot({ path: failureShot, fullPage: true }).catch(() => {});
    }
    console.error(`page at the failure: ${failureShot}`);
    process.exitCode = 1;
  } finally {
    clearTimeout(watchdog);
    await browser.close();
    await proxy.close();
  }
}

await main();
