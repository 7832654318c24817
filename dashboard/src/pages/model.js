// One model's page (first cut).

import { h } from '../dom.js';

export function mount(root, ctx) {
  root.append(h('section.card', {}, h('h2', { tabindex: '-1' }, 'Model ', ctx.route.id)));
  return () => {};
}
