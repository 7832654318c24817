// The System page (`#/system`): this deployment in one answer, from `systemInfo`: versions
// (modelplane, Python, the database server), the runtime (namespace or state directory), the
// replica that answered, the cluster in brief, the organisation's weights per location kind,
// the catalogue's sync state, and each controller lease with the replica holding it (the one
// that answered is marked "here"), so an operator sees which replica leads what.
//
// Leases move when a replica dies or is restarted, and they have no event: the page reads the
// answer again every REFRESH_MS while it is open (any replica may answer; each says which).

import './ops.css';
import './manager.css';
import SystemInfo from '@operations/SystemInfo.graphql';
import { fill, h } from '../dom.js';
import { bytes, clock } from '../format.js';
import { coalesce } from '../graphql.js';
import { stamp } from './manager-kit.js';
import { pageHead, problem } from './ops-kit.js';

const REFRESH_MS = 10_000;

function facts(section, pairs) {
  return h(
    'dl.facts.ops-facts',
    { 'data-section': section },
    pairs.map(([term, value, key]) => h('div', { 'data-fact': key }, h('dt', {}, term), h('dd', {}, value ?? '—'))),
  );
}

function leasesTable(leases) {
  if (leases.length === 0) return h('p.muted', { 'data-section': 'leases' }, 'No lease is held.');
  return h(
    'table.ops-table.mgr-leases',
    { 'data-section': 'leases' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Lease'), h('th', {}, 'Held by'), h('th', {}, 'Until'), h('th', {}, ''))),
    h(
      'tbody',
      {},
      leases.map((lease) =>
        h(
          'tr',
          { dataset: { lease: lease.name, here: String(lease.heldHere) } },
          h('td.mono', {}, lease.name),
          h('td.mono', {}, lease.holder ?? h('span.muted', {}, 'expired')),
          h('td', {}, clock(lease.expiresAt)),
          h('td', {}, lease.heldHere ? h('span.badge.phase-ready', {}, 'here') : null),
        ),
      ),
    ),
  );
}

function storageTable(storage) {
  if (storage.length === 0) return h('p.muted', { 'data-section': 'storage' }, 'No weights stored.');
  return h(
    'table.ops-table',
    { 'data-section': 'storage' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Kind'), h('th.num', {}, 'Weights'), h('th.num', {}, 'Ready'), h('th.num', {}, 'Bytes ready'))),
    h(
      'tbody',
      {},
      storage.map((row) =>
        h('tr', { dataset: { kind: row.kind } }, h('td', {}, row.kind), h('td.num', {}, String(row.weights)), h('td.num', {}, String(row.ready)), h('td.num', {}, bytes(row.bytes))),
      ),
    ),
  );
}

function catalogueFacts(info) {
  if (!info.catalogUrl) return h('p.muted', { 'data-section': 'catalogue' }, 'No catalogue is configured.');
  const sync = info.catalogSync ?? {};
  return facts('catalogue', [
    ['Remote', h('span.mono', {}, info.catalogUrl), 'url'],
    ['Commit', sync.commit ? h('span.mono', {}, sync.commit.slice(0, 10)) : null, 'commit'],
    ['Last success', stamp(sync.lastSuccessAt), 'last-success'],
    ['Last error', sync.lastError ? `${sync.lastErrorKind}: ${sync.lastError}` : 'none', 'last-error'],
  ]);
}

export function render(body, info) {
  const cluster = info.cluster;
  fill(
    body,
    facts('versions', [
      ['modelplane', info.version, 'version'],
      ['Python', info.pythonVersion, 'python'],
      ['Database', `${info.databaseKind}${info.databaseVersion ? ` ${info.databaseVersion}` : ''}`, 'database'],
      ['Runtime', info.runtime, 'runtime'],
      [info.runtime === 'kubernetes' ? 'Namespace' : 'State directory', info.namespace ?? info.stateDir, 'where'],
      ['Answered by', h('span.mono', {}, info.replica), 'replica'],
    ]),
    h('h3', {}, 'Cluster'),
    facts('cluster', [
      ['Kubernetes', cluster.kubernetesVersion, 'kubernetes'],
      ['GPU nodes', cluster.gpuNodes === null ? 'could not be listed' : String(cluster.gpuNodes), 'gpu-nodes'],
      ['GPUs allocatable', cluster.allocatableGpus === null ? '—' : String(cluster.allocatableGpus), 'gpus'],
      ['Problems', cluster.problems.length ? cluster.problems.join('; ') : 'none', 'problems'],
    ]),
    h('h3', {}, 'Controller leases'),
    leasesTable(info.leases),
    h('h3', {}, 'Weights by location kind'),
    storageTable(info.storage),
    h('h3', {}, 'Catalogue'),
    catalogueFacts(info),
  );
}

export function mount(root, ctx) {
  const body = h('div.ops-body', { 'aria-live': 'polite' }, h('p.muted', {}, 'Reading…'));
  const message = h('p.message', { role: 'alert' });
  const refresh = h('button.ghost', { type: 'button', onclick: () => load(null) }, 'Refresh');
  root.append(h('section.card.ops-page', { 'data-page': 'system' }, pageHead('System', refresh), message, body));
  let gone = false;
  const load = coalesce(async () => {
    try {
      const data = await ctx.request(SystemInfo, {});
      if (gone) return;
      render(body, data.systemInfo);
      body.dataset.replica = data.systemInfo.replica;
      problem(message, null);
    } catch (error) {
      if (!gone) problem(message, `Could not read the system summary: ${error.message}`);
    }
  });
  load(null);
  const timer = setInterval(() => load(null), REFRESH_MS);
  return () => {
    gone = true;
    clearInterval(timer);
  };
}
