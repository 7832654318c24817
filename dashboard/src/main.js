// The dashboard's shell: the token, who is signed in, the one live socket, the nav bar and the
// hash router that mounts one page module at a time.
//
// Every page is a module in pages/ exporting `mount(root, ctx)` that returns `unmount()`. The
// shell owns what pages share (the token, the socket and its indicator, the viewer) and hands
// it to pages through `ctx` (see dashboard/README.md). A page's subscriptions are also
// unsubscribed by the shell when it is unmounted, in case the page forgot one.

import './style.css';
import DashboardInfo from '@operations/DashboardInfo.graphql';
import { $, fill, h } from './dom.js';
import { ApiError, request } from './graphql.js';
import { createLiveConnection } from './live.js';
import * as addPage from './pages/add.js';
import * as cataloguePage from './pages/catalogue.js';
import * as clusterPage from './pages/cluster.js';
import * as keysPage from './pages/keys.js';
import * as modelPage from './pages/model.js';
import * as modelsPage from './pages/models.js';
import * as playgroundPage from './pages/playground.js';
import * as storagePage from './pages/storage.js';
import * as systemPage from './pages/system.js';
import { NAV, parseHash, toHash } from './router.js';
import { renderConnection } from './view.js';

const TOKEN_KEY = 'modelplane.token';
const PAGES = {
  models: modelsPage,
  model: modelPage,
  add: addPage,
  cluster: clusterPage,
  storage: storagePage,
  keys: keysPage,
  playground: playgroundPage,
  catalogue: cataloguePage,
  system: systemPage,
};

const shell = {
  token: null,
  viewer: null,
  serverInfo: null,
  live: null,
  /** Listeners of the socket's status (pages showing it), and the last status. */
  statusListeners: new Set(),
  status: { state: 'idle', cursor: null },
  /** The mounted page: `{ hash, unmount, subscriptions }`. */
  mounted: null,
  /** The message line was just written: keep it across the next navigation. */
  flashKept: false,
};

// ---- token ------------------------------------------------------------------------------

/** `?token=` wins (and is removed from the address bar), then local storage. */
function readToken() {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    localStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete('token');
    window.history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  return localStorage.getItem(TOKEN_KEY);
}

function showTokenPanel(show) {
  $('#token-panel').hidden = !show;
  if (show) $('#token-input').focus();
}

function wireTokenPanel() {
  $('#token-toggle').addEventListener('click', () => showTokenPanel($('#token-panel').hidden));
  $('#token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('#token-input').value.trim().replace(/^Bearer\s+/i, '');
    if (!value) return;
    localStorage.setItem(TOKEN_KEY, value);
    $('#token-input').value = '';
    showTokenPanel(false);
    start(value);
  });
  $('#token-forget').addEventListener('click', () => {
    localStorage.removeItem(TOKEN_KEY);
    stop();
    setStatus({ state: 'idle', cursor: null });
    showSignIn('Set a bearer token to begin.');
  });
}

// ---- messages and status ------------------------------------------------------------------

/** The shell's message line under the nav (kind: ok, warn, error). */
function flash(text, kind = 'ok') {
  shell.flashKept = Boolean(text); // a message survives the next navigation (e.g. "Added …")
  const message = $('#flash');
  message.textContent = text ?? '';
  message.dataset.kind = kind;
}

function setStatus(status) {
  shell.status = status;
  renderConnection($('#connection'), status);
  for (const listener of shell.statusListeners) listener(status);
}

// ---- pages --------------------------------------------------------------------------------

function renderNav(route) {
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.route === route.nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

/** The ctx handed to one mounted page (see dashboard/README.md). */
function pageContext(route, subscriptions) {
  return {
    route,
    request: (operation, variables = {}) => request(operation, variables, shell.token),
    subscribe(operation, variables = {}, handlers = {}) {
      if (!shell.live) throw new Error('not signed in');
      const unsubscribe = shell.live.subscribe(operation, variables, handlers);
      subscriptions.add(unsubscribe);
      return () => {
        subscriptions.delete(unsubscribe);
        unsubscribe();
      };
    },
    token: () => shell.token,
    navigate,
    setParams(params, { replace = false } = {}) {
      const hash = toHash(route.name, route.id, params);
      route.params = new URLSearchParams(hash.split('?')[1] ?? '');
      if (shell.mounted) shell.mounted.hash = hash;
      if (hash === window.location.hash) return;
      if (replace) window.history.replaceState(null, '', hash);
      else window.history.pushState(null, '', hash);
    },
    viewer: shell.viewer,
    serverInfo: shell.serverInfo,
    canEdit: shell.viewer !== null && shell.viewer.role !== 'VIEWER',
    flash,
    connection(listener) {
      shell.statusListeners.add(listener);
      listener(shell.status);
      return () => shell.statusListeners.delete(listener);
    },
  };
}

function unmountPage() {
  const mounted = shell.mounted;
  shell.mounted = null;
  if (!mounted) return;
  try {
    mounted.unmount?.();
  } catch (error) {
    console.error('unmount failed', error);
  }
  for (const unsubscribe of mounted.subscriptions) unsubscribe();
}

/** Mounts the page the address names (again when `force`, e.g. after a new token). */
function route(force = false) {
  const hash = window.location.hash || '#/models';
  if (!force && shell.mounted?.hash === hash) return;
  unmountPage();
  const current = parseHash(hash);
  renderNav(current);
  const root = $('#page');
  fill(root);
  if (!shell.token || !shell.viewer) return;
  const subscriptions = new Set();
  const mounted = { hash, unmount: null, subscriptions };
  shell.mounted = mounted;
  if (shell.flashKept) shell.flashKept = false;
  else flash('');
  mounted.unmount = PAGES[current.name].mount(root, pageContext(current, subscriptions));
  if (shell.mounted !== mounted) {
    // The page navigated away while mounting: it is already replaced.
    mounted.unmount?.();
    return;
  }
  if (!root.contains(document.activeElement)) root.querySelector('h2')?.focus({ preventScroll: true });
}

function navigate(hash, { replace = false } = {}) {
  if (replace) window.history.replaceState(null, '', hash);
  else window.history.pushState(null, '', hash);
  route();
}

// ---- start-up -----------------------------------------------------------------------------

function showSignIn(text) {
  unmountPage();
  fill($('#page'), h('section.card', {}, h('h2', { tabindex: '-1' }, 'Sign in'), h('p.muted', {}, text)));
  showTokenPanel(true);
}

function stop() {
  unmountPage();
  shell.live?.stop();
  shell.live = null;
  shell.viewer = null;
}

async function start(token) {
  stop();
  shell.token = token;
  try {
    const info = await request(DashboardInfo, {}, token);
    shell.viewer = info.viewer;
    shell.serverInfo = info.serverInfo;
    $('#server').textContent = `${info.serverInfo.version} · ${info.serverInfo.runtime} runtime`;
    $('#viewer').textContent = `${info.viewer.subject} · ${info.viewer.role.toLowerCase()} · ${info.viewer.organizationId}`;
  } catch (error) {
    const message = error instanceof ApiError ? error.message : String(error);
    const reason = /authentication/i.test(message) ? 'token rejected' : 'sign-in failed';
    setStatus({ state: 'rejected', cursor: null, reason });
    showSignIn(`Could not sign in: ${message}. Set a token.`);
    return;
  }
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  shell.live = createLiveConnection({
    url: `${scheme}//${window.location.host}/graphql`,
    token,
    onStatus: setStatus,
  });
  route(true);
}

function main() {
  fill(
    $('#nav'),
    NAV.map((item) => h('a', { href: item.hash, dataset: { route: item.name } }, item.label)),
  );
  wireTokenPanel();
  window.addEventListener('hashchange', () => route());
  window.addEventListener('popstate', () => route());
  renderNav(parseHash(window.location.hash));
  const token = readToken();
  if (token) start(token);
  else showSignIn('Set a bearer token to begin (the dev server prints one at start-up).');
}

main();
