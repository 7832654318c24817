// The Cluster page: where models run and what GPUs there are, from `clusterStatus` (read now on
// every call; nothing is cached server-side).
//
// Shown: the runtime (Kubernetes version and namespace, or "local: no cluster"), GPUs by type
// (nodes, memory per GPU, allocatable, free), every GPU node (requested, free, Ready, cordoned),
// the optional integrations found by their CRDs or APIs, and what could not be read (`problems`).
// Free GPUs change when inferences start and stop, so inference events read the status again
// (a burst of them costs one read, and reads never overlap: see `coalesce`); nodes and pods
// coming and going have no event, so the page also reads it every REFRESH_MS while it is open.

import './ops.css';
import ClusterStatus from '@operations/ClusterStatus.graphql';
import InferenceEvents from '@operations/InferenceEvents.graphql';
import { fill, h } from '../dom.js';
import { clock } from '../format.js';
import { coalesce } from '../graphql.js';
import { batched, pageHead, problem } from './ops-kit.js';

const REFRESH_MS = 15_000;
/** A burst of inference events costs one read of the cluster. */
const EVENT_BATCH_MS = 500;

/** Integration flag → what it is and how it is found (the schema's descriptions, shortened). */
export const INTEGRATIONS = [
  ['kuberay', 'KubeRay', 'rayclusters.ray.io'],
  ['envoyGateway', 'Envoy Gateway', 'envoyproxies.gateway.envoyproxy.io'],
  ['podAutoscaler', 'AIBrix autoscaling', 'podautoscalers.autoscaling.aibrix.ai'],
  ['kserve', 'KServe', 'inferenceservices.serving.kserve.io'],
  ['gpuOperator', 'NVIDIA GPU operator', 'clusterpolicies.nvidia.com'],
  ['serviceMonitor', 'Prometheus Operator', 'servicemonitors.monitoring.coreos.com'],
  ['customMetrics', 'Custom metrics API', 'custom.metrics.k8s.io'],
];

/** Nodes grouped by GPU type: `{ gpuType, nodes, memoryBytesPerGpu, allocatable, requested, free }`. */
export function byGpuType(nodes) {
  const types = new Map();
  for (const node of nodes) {
    const row = types.get(node.gpuType) ?? {
      gpuType: node.gpuType,
      nodes: 0,
      memoryBytesPerGpu: node.memoryBytesPerGpu,
      allocatable: 0,
      requested: 0,
      free: 0,
    };
    row.nodes += 1;
    row.allocatable += node.allocatableGpus;
    row.requested += Math.min(node.requestedGpus, node.allocatableGpus);
    row.free += node.freeGpus;
    types.set(node.gpuType, row);
  }
  return [...types.values()].sort((a, b) => b.allocatable - a.allocatable || a.gpuType.localeCompare(b.gpuType));
}

/** GPUs requested (blue), unavailable on cordoned or not-Ready nodes (grey), free (green). */
function gpuBar({ allocatable, requested, free }) {
  const unavailable = Math.max(0, allocatable - requested - free);
  const share = (n) => `${allocatable ? (n / allocatable) * 100 : 0}%`;
  return h(
    'div.ops-bar.small',
    {
      role: 'img',
      'aria-label': `${requested} requested, ${unavailable} unavailable, ${free} free of ${allocatable}`,
      title: `${requested} requested · ${unavailable} unavailable (cordoned or not Ready) · ${free} free`,
    },
    h('div.ops-bar-weights', { style: { width: share(requested) } }),
    h('div.ops-bar-used', { style: { width: share(unavailable) } }),
  );
}

/** GPU memory in binary units, as GPUs are sold: 81920 MiB → `80 GiB`. */
function gpuMemory(value) {
  if (value === null || value === undefined) return '—';
  const gib = Number(value) / 2 ** 30;
  return `${gib >= 10 ? gib.toFixed(0) : gib.toFixed(1)} GiB`;
}

function summary(status) {
  const local = status.runtime === 'local';
  const facts = [
    ['Runtime', local ? 'local processes' : 'Kubernetes'],
    ['Kubernetes', status.kubernetesVersion ?? '—'],
    ['Namespace', status.namespace ?? '—'],
    ['GPUs free', `${status.freeGpus} of ${status.totalGpus}`],
    ['GPU nodes', String(status.gpuNodes.length)],
  ];
  return h(
    'dl.facts.ops-facts',
    { 'data-section': 'summary' },
    facts.map(([term, value]) => h('div', { 'data-fact': term.toLowerCase().replace(/ /g, '-') }, h('dt', {}, term), h('dd', {}, value))),
  );
}

function localNote(status) {
  if (status.runtime !== 'local') return null;
  return h(
    'p.ops-note',
    { 'data-section': 'local-note' },
    h('strong', {}, 'Local runtime: no cluster. '),
    'modelplane runs each engine as a process on this machine. The GPUs below are this machine’s own ',
    '(from nvidia-smi; none when it is absent), and the integrations are Kubernetes components, so none ',
    'applies here.',
  );
}

function typesTable(status) {
  const types = byGpuType(status.gpuNodes);
  if (types.length === 0) {
    const where = status.runtime === 'local' ? 'on this machine' : 'in the cluster (no node has nvidia.com/gpu allocatable)';
    return h('p.empty', { 'data-section': 'gpu-types' }, `No GPUs ${where}.`);
  }
  return h(
    'table.ops-table',
    { 'data-section': 'gpu-types' },
    h('thead', {}, h('tr', {}, h('th', {}, 'GPU type'), h('th.num', {}, 'Nodes'), h('th.num', {}, 'Memory / GPU'), h('th.num', {}, 'Allocatable'), h('th.num', {}, 'Free'), h('th', {}, 'Requested · unavailable · free'))),
    h(
      'tbody',
      {},
      types.map((t) =>
        h(
          'tr',
          { dataset: { gpuType: t.gpuType } },
          h('td.mono', {}, t.gpuType),
          h('td.num', {}, String(t.nodes)),
          h('td.num', {}, gpuMemory(t.memoryBytesPerGpu)),
          h('td.num', { 'data-col': 'allocatable' }, String(t.allocatable)),
          h('td.num', { 'data-col': 'free' }, String(t.free)),
          h('td', {}, gpuBar(t)),
        ),
      ),
    ),
  );
}

function nodeState(node) {
  if (!node.ready) return h('span.badge.phase-failed', { title: 'the Ready condition is not True' }, 'NOT READY');
  if (!node.schedulable) return h('span.badge.phase-pending', { title: 'cordoned: no new pods' }, 'CORDONED');
  return h('span.badge.phase-ready', {}, 'READY');
}

function nodesTable(status) {
  if (status.gpuNodes.length === 0) return null;
  const nodes = [...status.gpuNodes].sort((a, b) => a.gpuType.localeCompare(b.gpuType) || a.name.localeCompare(b.name));
  return h(
    'table.ops-table',
    { 'data-section': 'nodes' },
    h('thead', {}, h('tr', {}, h('th', {}, 'Node'), h('th', {}, 'GPU type'), h('th.num', {}, 'Allocatable'), h('th.num', {}, 'Requested'), h('th.num', {}, 'Free'), h('th', {}, 'State'))),
    h(
      'tbody',
      {},
      nodes.map((n) =>
        h(
          'tr',
          { dataset: { node: n.name } },
          h('td.mono', {}, n.name),
          h('td.mono', {}, n.gpuType),
          h('td.num', {}, String(n.allocatableGpus)),
          h('td.num', {}, String(n.requestedGpus)),
          h('td.num', { 'data-col': 'free' }, String(n.freeGpus)),
          h('td', {}, nodeState(n)),
        ),
      ),
    ),
  );
}

function integrationsList(status) {
  return h(
    'ul.ops-integrations',
    { 'data-section': 'integrations' },
    INTEGRATIONS.map(([flag, name, how]) => {
      const found = status.integrations[flag];
      return h(
        'li',
        { dataset: { integration: flag, found: String(found) }, title: `found by ${how}` },
        h(found ? 'span.badge.phase-ready' : 'span.badge', {}, found ? 'found' : 'not found'),
        h('span', {}, name),
        h('span.muted.mono', {}, how),
      );
    }),
  );
}

function problemsList(status) {
  if (status.problems.length === 0) return h('p.muted', { 'data-section': 'problems' }, 'None: everything could be read.');
  return h(
    'ul.ops-problems',
    { 'data-section': 'problems' },
    status.problems.map((text) => h('li', {}, text)),
  );
}

export function render(body, status, readAt) {
  fill(
    body,
    localNote(status),
    summary(status),
    h('h3', {}, 'GPUs by type'),
    typesTable(status),
    status.gpuNodes.length ? h('h3', {}, 'GPU nodes') : null,
    nodesTable(status),
    h('h3', {}, 'Integrations'),
    integrationsList(status),
    h('h3', {}, 'Problems'),
    problemsList(status),
    h('p.hint', {}, `Read at ${clock(readAt)}; again on every inference event and every ${REFRESH_MS / 1000} s.`),
  );
}

export function mount(root, ctx) {
  const body = h('div.ops-body', { 'aria-live': 'polite' }, h('p.muted', {}, 'Reading the cluster…'));
  const message = h('p.message', { role: 'alert' });
  const refresh = h('button.ghost', { type: 'button', onclick: () => load(null) }, 'Refresh');
  root.append(h('section.card.ops-page', { 'data-page': 'cluster' }, pageHead('Cluster', refresh), message, body));
  let gone = false;

  const load = coalesce(async () => {
    try {
      const data = await ctx.request(ClusterStatus, {});
      if (gone) return;
      render(body, data.clusterStatus, new Date().toISOString());
      body.dataset.runtime = data.clusterStatus.runtime;
      problem(message, null);
    } catch (error) {
      if (!gone) problem(message, `Could not read the cluster: ${error.message}`);
    }
  });
  load(null);
  const timer = setInterval(() => load(null), REFRESH_MS);
  const soon = batched(() => load(null), EVENT_BATCH_MS);
  const unsubscribe = ctx.subscribe(InferenceEvents, {}, { next: soon });
  return () => {
    gone = true;
    soon.cancel();
    clearInterval(timer);
    unsubscribe?.();
  };
}
