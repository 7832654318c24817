// End-to-end check of the dashboard in headless Chromium (Debian's, driven by playwright-core).
//
//   MODELPLANE_TOKEN=<jwt> node dashboard/tests/e2e.mjs --url http://127.0.0.1:PORT \
//       --screenshot tests/artifacts/dashboard.png
//
// The browser reaches modelplane through a small TCP proxy started here, so the test can cut
// the page's WebSocket the way a network does: the proxy resets the TCP connections that
// carried a WebSocket upgrade, then refuses new upgrades until the download has finished on
// the server (checked over GraphQL directly, not through the page). The page cannot have seen
// the completion live; it must get it from the replay when it reconnects with `after: <last
// cursor>`. Nothing in the page is stubbed or hooked.
//
// Then it serves the model: Start in the row (after a refused start with 0 replicas from the
// inference pane's form), the row's inference badge following PENDING → … → RUNNING live, the
// pane's phase timeline and the engine's log lines (modelplane must run with a `vllm` on PATH:
// tests/test_dashboard.py puts a stand-in there), then Stop and the badge reaching STOPPED.
//
// Prints one JSON summary line on success; exits 1 with the reason otherwise. The token is
// read from the environment and never printed.

import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'];
const REPO = 'tiny-org/tiny-model';

const { values: options } = parseArgs({
  options: {
    url: { type: 'string' },
    screenshot: { type: 'string', default: 'tests/artifacts/dashboard.png' },
    timeout: { type: 'string', default: '90' },
  },
});
const token = process.env.MODELPLANE_TOKEN;
if (!options.url || !token) {
  console.error('usage: MODELPLANE_TOKEN=... node e2e.mjs --url http://127.0.0.1:PORT [--screenshot FILE]');
  process.exit(2);
}
const target = new URL(options.url);

function log(message) {
  console.log(`[e2e ${new Date().toISOString().slice(11, 23)}] ${message}`);
}

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

/** Polls `probe` until it returns a truthy value, or fails with `what` after `seconds`. */
async function until(what, probe, seconds = 30, intervalMs = 100) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Failure(`timed out after ${seconds} s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

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

  log(`opening the dashboard through the proxy ${proxy.url}`);
  await page.goto(`${proxy.url}/?token=${encodeURIComponent(token)}`);
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
  const row = page.locator('#models tr', { hasText: REPO }).first();
  await row.waitFor({ timeout: 15_000 });
  const modelId = await row.getAttribute('data-model-id');
  log(`created model ${modelId}; watching its progress bar`);

  const seen = [];
  await until(
    'two increasing progress values before the end of the download',
    async () => {
      const meter = row.locator('.meter');
      if ((await meter.count()) === 0) {
        check((await row.getAttribute('data-phase')) !== 'READY', 'the download finished before any progress was seen');
        return false;
      }
      const done = Number(await meter.getAttribute('data-bytes-done'));
      const total = Number(await meter.getAttribute('data-bytes-total'));
      if (done > 0 && done < total && done !== seen.at(-1)) seen.push(done);
      return seen.length >= 2;
    },
    30,
    50,
  );
  check(seen[1] > seen[0], `progress went backwards: ${seen}`);
  check(await row.locator('button[data-action="start"]').isDisabled(), 'Start is enabled during the download');
  await page.screenshot({ path: options.screenshot.replace(/\.png$/, '-progress.png') });
  log(`progress advanced ${seen.join(' -> ')} bytes; cutting the WebSocket`);

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
  await page.screenshot({ path: options.screenshot, fullPage: true });
  log(`row READY after ${resumedMatch[0]}; screenshot ${options.screenshot}`);

  const served = await serve(page, modelId);
  check(loads === 1, `the page was reloaded (${loads} loads)`);
  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(' | ')}`);
  return { modelId, progress: seen, resumedAfterCursor: resumedMatch[1], indicatorHistory: history, ...served };
}

/** The row's inference badge, the pane's timeline, its logs, Start and Stop. */
async function serve(page, modelId) {
  const rowSelector = `#models tr[data-model-id="${modelId}"]`;
  const row = page.locator(rowSelector);
  const pane = page.locator('#inference-pane');
  await page.evaluate((selector) => {
    // Record every inference phase the row shows, however briefly (rows are redrawn, not edited).
    window.inferencePhases = [];
    const record = () => {
      const phase = document.querySelector(selector)?.dataset.inferencePhase;
      if (phase && phase !== window.inferencePhases.at(-1)) window.inferencePhases.push(phase);
    };
    new MutationObserver(record).observe(document.querySelector('#models'), {
      childList: true,
      subtree: true,
      attributes: true,
      attributeFilter: ['data-inference-phase'],
    });
  }, rowSelector);

  log('opening the inference pane; starting with 0 replicas must be refused');
  await row.locator('button[data-action="inference"]').click();
  await pane.locator('#start-form').waitFor({ state: 'visible', timeout: 10_000 });
  check((await pane.getAttribute('data-model-id')) === modelId, 'the pane shows another model');
  await page.fill('#start-replicas', '0');
  await page.click('#start-submit');
  const refused = page.locator('#pane-message[data-kind="error"]');
  await refused.waitFor({ timeout: 10_000 });
  const refusal = await refused.innerText();
  check(/ValidationError: .*replicas/.test(refusal), `the pane does not show the ValidationError: ${refusal}`);
  const rowNote = await row.locator('td.inference .note').innerText();
  check(rowNote === refusal, `the row does not show the refusal inline: ${rowNote}`);
  check((await row.getAttribute('data-inference-phase')) === '', 'a refused start made an inference');
  await page.fill('#start-replicas', '');

  log(`refused inline (${refusal}); clicking Start in the row`);
  await row.locator('button[data-action="start"]').click();
  await page.locator(`${rowSelector}[data-inference-phase="RUNNING"]`).waitFor({ timeout: 30_000 });
  check((await row.locator('td.inference .note').count()) === 0, 'the refusal stayed after a good start');
  check(await row.locator('button[data-action="start"]').isDisabled(), 'Start is enabled while serving');
  check(await row.locator('button[data-action="stop"]').isEnabled(), 'Stop is disabled while serving');
  // The badge moves with the PHASE_CHANGED event itself; the replicas come with the re-read
  // of the model that the event also triggers (store.js), a moment later: wait for it.
  const readyCell = row.locator('td.inference', { hasText: '1/1 ready' });
  const readyShown = await readyCell.waitFor({ timeout: 10_000 }).then(() => true, () => false);
  const readyText = await row.locator('td.inference').innerText();
  check(readyShown, `the row does not show the ready replicas: ${readyText}`);

  const timelinePhases = () =>
    pane.locator('#pane-timeline li').evaluateAll((items) => items.map((li) => li.dataset.phase));
  const running = await until(
    'the pane timeline to reach RUNNING',
    async () => {
      const phases = await timelinePhases();
      return phases.at(-1) === 'RUNNING' ? phases : null;
    },
    15,
  );
  check(running[0] === 'PENDING', `the timeline does not start with PENDING: ${running}`);
  const endpoint = await pane.locator('[data-fact="endpoint"] dd').innerText();
  check(/^http:\/\/127\.0\.0\.1:\d+\/v1$/.test(endpoint), `the pane shows no endpoint: ${endpoint}`);
  const engine = await pane.locator('[data-fact="engine"] dd').innerText();
  check(engine === 'VLLM', `the pane shows engine ${engine}`);
  const logs = await until(
    'a log line from the engine in the pane',
    async () => {
      const text = await pane.locator('#pane-logs').innerText();
      return /loaded \d+ files/.test(text) ? text : null;
    },
    15,
    250,
  );
  check(await pane.locator('#start-form').isHidden(), 'the start form is shown while serving');

  await page.mouse.move(0, 0);
  const shot = options.screenshot.replace(/\.png$/, '-inference.png');
  await page.screenshot({ path: shot, fullPage: true });
  log(`RUNNING (${running.join(' -> ')}) at ${endpoint}; screenshot ${shot}; clicking Stop`);

  await row.locator('button[data-action="stop"]').click();
  // STOPPED, then no inference at all once the stop completes (the row's phase empties).
  await until(
    'the row to show STOPPED, then no inference',
    () => page.evaluate(() => window.inferencePhases.includes('STOPPED')),
    30,
  );
  await page.locator(`${rowSelector}[data-inference-phase=""]`).waitFor({ timeout: 30_000 });
  const stopped = await until(
    'the pane timeline to reach STOPPED',
    async () => {
      const phases = await timelinePhases();
      return phases.at(-1) === 'STOPPED' ? phases : null;
    },
    15,
  );
  await until('Start to be enabled again', () => row.locator('button[data-action="start"]').isEnabled(), 10);
  const rowPhases = await page.evaluate(() => window.inferencePhases);
  check(
    rowPhases.indexOf('RUNNING') >= 0 && rowPhases.indexOf('RUNNING') < rowPhases.indexOf('STOPPED'),
    `the row's inference phases: ${rowPhases}`,
  );
  log(`STOPPED; the row showed ${rowPhases.join(' -> ')}`);
  return { inferencePhases: rowPhases, timeline: stopped, logLines: logs.split('\n').length, endpoint };
}

async function main() {
  await mkdir(path.dirname(path.resolve(options.screenshot)), { recursive: true });
  const proxy = await startProxy();
  let browser;
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
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
    const failureShot = options.screenshot.replace(/\.png$/, '-failure.png');
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
