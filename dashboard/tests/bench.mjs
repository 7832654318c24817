// Measures the models page for bench/dashboard.py: for each token given, a fresh browser
// context (empty cache) opens `/#/models` and records the time from the start of navigation to
// the first page of the models table drawn (rows in the table and the read finished), and the
// bytes the page loaded by then (HTTP bodies plus headers: the page, its script and stylesheet,
// the GraphQL answers; WebSocket frames are not counted). Then it clicks Next and records the
// time to the second page.
//
//   node dashboard/tests/bench.mjs --url http://127.0.0.1:PORT --runs 3 LABEL=TOKEN ...
//
// Prints one JSON line per label.

import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const { values: options, positionals } = parseArgs({
  options: { url: { type: 'string' }, runs: { type: 'string', default: '3' } },
  allowPositionals: true,
});

/** Marks the moment the table first shows a finished read with rows (performance.now()). */
function watchTable() {
  const mark = () => {
    const table = document.querySelector('table.models');
    if (!window.tableDrawnAt && table?.dataset.loaded && !table.hasAttribute('aria-busy') && table.querySelector('tbody tr')) {
      window.tableDrawnAt = performance.now();
    }
  };
  new MutationObserver(mark).observe(document, { subtree: true, childList: true, attributes: true });
}

async function measure(browser, token) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  await context.addInitScript(`localStorage.setItem('modelplane.token', ${JSON.stringify(token)});`);
  await context.addInitScript(`(${watchTable.toString()})();`);
  const page = await context.newPage();
  const bytes = { static: 0, graphql: 0 };
  const pending = [];
  page.on('requestfinished', (request) => {
    pending.push(
      request.sizes().then((sizes) => {
        const kind = new URL(request.url()).pathname === '/graphql' ? 'graphql' : 'static';
        bytes[kind] += sizes.responseBodySize + sizes.responseHeadersSize;
      }),
    );
  });
  await page.goto(`${options.url}/#/models`);
  await page.waitForFunction(() => window.tableDrawnAt, null, { timeout: 120_000, polling: 50 });
  const drawnMs = await page.evaluate(() => window.tableDrawnAt);
  // The longest GraphQL request before the table was drawn: the models query.
  const queryMs = await page.evaluate(() =>
    Math.max(
      0,
      ...performance
        .getEntriesByType('resource')
        .filter((e) => e.name.endsWith('/graphql') && e.startTime < window.tableDrawnAt)
        .map((e) => e.duration),
    ),
  );
  await Promise.all(pending);
  const loaded = { ...bytes };
  const before = await page.locator('table.models').getAttribute('data-loaded');
  const rows = await page.locator('#models tr').count();
  const total = await page.locator('#model-count').getAttribute('data-total');
  const clicked = await page.evaluate(() => performance.now());
  await page.click('#models-next');
  await page.waitForFunction(
    (previous) => {
      const table = document.querySelector('table.models');
      return table.dataset.loaded !== previous && !table.hasAttribute('aria-busy');
    },
    before,
    { timeout: 120_000, polling: 20 },
  );
  const nextMs = (await page.evaluate(() => performance.now())) - clicked;
  await context.close();
  return { drawnMs, queryMs, nextMs, rows, total: Number(total), bytes: loaded };
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu'] });
try {
  for (const pair of positionals) {
    const [label, token] = pair.split('=', 2);
    const runs = [];
    for (let i = 0; i < Number(options.runs); i += 1) runs.push(await measure(browser, token));
    console.log(JSON.stringify({ label, runs }));
  }
} finally {
  await browser.close();
}
