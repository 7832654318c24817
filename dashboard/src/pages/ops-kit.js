// Small parts shared by the Cluster, Storage, API keys and Playground pages: the page heading
// and the page-level message line.

import { h } from '../dom.js';

/** The page's heading with its buttons on the right. */
export function pageHead(title, ...buttons) {
  return h('div.card-head', {}, h('h2', {}, title), h('div.ops-buttons', {}, ...buttons));
}

/** Shows `text` as an error in the message line `element`, or clears it (null). */
export function problem(element, text, kind = 'error') {
  element.textContent = text ?? '';
  if (text) element.dataset.kind = kind;
  else delete element.dataset.kind;
}

/** Asks before a destructive action; resolves true to go ahead. */
export async function confirmAction(text) {
  return window.confirm(text);
}

/** Removes the errors `showUnionError` put in `form`. */
export function clearFieldErrors(form) {
  for (const element of form.querySelectorAll('.field-error')) element.remove();
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
}

/**
 * Shows a result union's error member next to the field it names (the `.field` whose
 * `data-field` is the error's field, or the last part of its path), else in `fallback`.
 */
export function showUnionError(form, result, fallback) {
  const field = result.field ?? result.conflictField ?? null;
  const text = `${result.__typename}: ${result.errorMessage ?? 'refused'}`;
  const name = field ? field.split('.').at(-1) : null;
  const holder = name ? form.querySelector(`.field[data-field="${name}"]`) : null;
  if (!holder) {
    problem(fallback, text);
    return;
  }
  const input = holder.querySelector('input, select, textarea');
  const id = `${input?.id ?? name}-error`;
  input?.setAttribute('aria-invalid', 'true');
  input?.setAttribute('aria-describedby', id);
  holder.append(h('span.field-error', { id, role: 'alert', 'data-field': name }, text));
  input?.focus();
}
