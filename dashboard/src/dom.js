// Small DOM helpers: enough to build rows and cards without a framework.

/**
 * Creates an element. `tag` may carry an id and classes (`'span#state.badge.ok'`); `props` are attributes, with
 * `on<event>` for listeners, `dataset` for data attributes and booleans for boolean attributes.
 * Children are nodes or text; null, undefined and false are skipped.
 */
export function h(tag, props = {}, ...children) {
  const id = /#([\w-]+)/.exec(tag)?.[1];
  const [name, ...classes] = tag.replace(/#[\w-]+/, '').split('.');
  const element = document.createElement(name);
  if (id) element.id = id;
  if (classes.length > 0) element.className = classes.join(' ');
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      element.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (key === 'style' && typeof value === 'object') {
      Object.assign(element.style, value);
    } else {
      element.setAttribute(key, value === true ? '' : String(value));
    }
  }
  element.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

/** The first element matching `selector`; throws when the page lacks it (a template bug). */
export function $(selector, root = document) {
  const element = root.querySelector(selector);
  if (element === null) throw new Error(`missing element ${selector}`);
  return element;
}

/** Replaces the children of `element`. */
export function fill(element, ...children) {
  element.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}
