// Hash routes: `#/models` (default), `#/models/<id>`, `#/add`, `#/cluster`, `#/storage`,
// `#/keys`, `#/playground`, `#/catalogue`, `#/system`, each with optional parameters after `?`
// (`#/models?q=llama&page=2`).
// Hash routing needs nothing from the server (it serves one page at `/`) and a reload or the
// back button lands on the same view.

/** Route name → the nav link that is current for it. */
export const NAV = [
  { name: 'models', label: 'Models', hash: '#/models' },
  { name: 'add', label: 'Add model', hash: '#/add' },
  { name: 'cluster', label: 'Cluster', hash: '#/cluster' },
  { name: 'storage', label: 'Storage', hash: '#/storage' },
  { name: 'catalogue', label: 'Catalogue', hash: '#/catalogue' },
  { name: 'keys', label: 'API keys', hash: '#/keys' },
  { name: 'playground', label: 'Playground', hash: '#/playground' },
  { name: 'system', label: 'System', hash: '#/system' },
];
const KNOWN = new Set(NAV.map((item) => item.name));

/**
 * `{ name, id, params, nav }` for a hash: `name` is a page module's name (`model` for a model's
 * detail, with `id`), `params` the URLSearchParams after `?`, `nav` the nav item to mark.
 */
export function parseHash(hash) {
  const text = hash.replace(/^#\/?/, '');
  const [path, query = ''] = text.split('?', 2);
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query);
  if (parts[0] === 'models' && parts[1]) return { name: 'model', id: parts[1], params, nav: 'models' };
  const name = KNOWN.has(parts[0]) ? parts[0] : 'models';
  return { name, id: null, params, nav: name };
}

/** The hash for a route name, id and parameters (parameters with empty values are left out). */
export function toHash(name, id = null, params = {}) {
  const path = name === 'model' ? `#/models/${encodeURIComponent(id)}` : `#/${name}`;
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
