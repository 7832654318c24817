// What every browser script under dashboard/tests shares: its command line (`scriptOptions`),
// Debian's Chromium launched headless,
// a typed failure with `check` and `until`, a timestamped log, GraphQL straight to modelplane
// (not through the page), and `runScript`: one browser for one case, a watchdog, a screenshot
// of every open page when the case fails, and one JSON summary line when it passes.

import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'];

/**
 * The command line of a one-case script: `--url`, `--<caseOption>`, `--artifacts`,
 * `--timeout` (seconds, default `timeout`) and `extra` options; the token from
 * `MODELPLANE_TOKEN`. Exits 2 with the usage when one is missing.
 */
export function scriptOptions(script, { caseOption, timeout, extra = {}, cases = 'NAME' }) {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      [caseOption]: { type: 'string' },
      artifacts: { type: 'string', default: 'tests/artifacts' },
      timeout: { type: 'string', default: String(timeout) },
      ...extra,
    },
  });
  const token = process.env.MODELPLANE_TOKEN;
  if (!values.url || !values[caseOption] || !token) {
    console.error(`usage: MODELPLANE_TOKEN=... node ${script}.mjs --url http://127.0.0.1:PORT --${caseOption} ${cases}`);
    process.exit(2);
  }
  return { options: values, token };
}

/** A check that failed: reported by its message alone (other errors with their stack). */
export class Failure extends Error {}

export function check(condition, message) {
  if (!condition) throw new Failure(message);
}

/** Polls `probe` until it returns a truthy value, or fails with `what` after `seconds`. */
export async function until(what, probe, seconds = 30, intervalMs = 100) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Failure(`timed out after ${seconds} s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** `log(message)` printing `[name hh:mm:ss.mmm] message`. */
export function logger(name) {
  return (message) => console.log(`[${name} ${new Date().toISOString().slice(11, 23)}] ${message}`);
}

/** `graphql(query, variables)` against modelplane at `url` with `token`; errors are failures. */
export function graphqlClient(url, token) {
  return async (query, variables = {}) => {
    const response = await fetch(new URL('/graphql', url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ query, variables }),
    });
    const body = await response.json();
    if (body.errors) throw new Failure(`GraphQL: ${JSON.stringify(body.errors)}`);
    return body.data;
  };
}

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
}

/**
 * Runs `body(browser)` under a watchdog of `timeoutSeconds`; prints `{ok: true, ...summary}`
 * when it passes, else the reason (exit code 1) and a screenshot of each open page to
 * `failureShot`.
 */
export async function runScript({ name, timeoutSeconds, failureShot, body }) {
  const browser = await launchBrowser();
  const watchdog = setTimeout(() => {
    console.error(`${name}: gave up after ${timeoutSeconds} s`);
    process.exit(1);
  }, timeoutSeconds * 1000);
  try {
    const summary = await body(browser);
    console.log(JSON.stringify({ ok: true, ...summary }));
  } catch (error) {
    console.error(`${name} failed: ${error instanceof Failure ? error.message : error.stack}`);
    for (const context of browser.contexts()) {
      for (const page of context.pages()) await page.screenshot({ path: failureShot, fullPage: true }).catch(() => {});
    }
    process.exitCode = 1;
  } finally {
    clearTimeout(watchdog);
    await browser.close();
  }
}
