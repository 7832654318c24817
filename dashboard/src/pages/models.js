// The models page (first cut: the first page of models; paging, search and filters follow).

import DashboardModels from '@operations/DashboardModels.graphql';
import { h } from '../dom.js';
import { toHash } from '../router.js';

export function mount(root, ctx) {
  const list = h('ul');
  const count = h('span.count');
  root.append(h('section.card', {}, h('h2', { tabindex: '-1' }, 'Models ', count), list));
  let alive = true;
  ctx.request(DashboardModels, { limit: 100 }).then((data) => {
    if (!alive) return;
    count.textContent = String(data.models.total);
    list.append(
      ...data.models.items.map((m) =>
        h('li', {}, h('a', { href: toHash('model', m.id) }, m.name), ' ', m.phase),
      ),
    );
  });
  return () => {
    alive = false;
  };
}
