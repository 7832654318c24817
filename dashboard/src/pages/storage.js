// The Storage page (placeholder: its content comes with the operations pages).

import { h } from '../dom.js';

export function mount(root) {
  root.append(h('section.card', {}, h('h2', { tabindex: '-1' }, 'Storage')));
  return () => {};
}
