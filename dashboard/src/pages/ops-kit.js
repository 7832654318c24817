// Small parts shared by the Cluster, Storage, API keys and Playground pages: the page heading
// and the page-level message line.

import { h } from '../dom.js';

/** The page's heading with its buttons on the right. */
export function pageHead(title, ...buttons) {
  return h('div.card-head', {}, h('h2', { tabindex: '-1' }, title), h('div.ops-buttons', {}, ...buttons));
}

/** Shows `text` as an error in the message line `element`, or clears it (null). */
export function problem(element, text, kind = 'error') {
  element.textContent = text ?? '';
  if (text) element.dataset.kind = kind;
  else delete element.dataset.kind;
}

/**
 * `run()` at most once per `ms`: the first call schedules it `ms` later and calls meanwhile join
 * it, so a burst of events costs one read. `cancel()` drops a scheduled run (on unmount).
 */
export function batched(run, ms) {
  let timer = null;
  const call = () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      run();
    }, ms);
  };
  call.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return call;
}
