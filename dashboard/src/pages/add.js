// The add-a-model page (first cut).

import { h } from '../dom.js';

export function mount(root) {
  root.append(h('section.card', {}, h('h2', { tabindex: '-1' }, 'Add a model')));
  return () => {};
}
