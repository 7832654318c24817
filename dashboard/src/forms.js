// What every form on every page shares: a mutation's union error shown next to the input it
// names, and a confirmation dialog before anything destructive.
//
// Result unions carry the error as a member implementing UserError (UserErrorFields:
// `__typename`, `errorMessage`, and `field` on ValidationError, `conflictField` on
// ConflictError). The named field is an input path such as `source.url` or
// `downloadTarget.pvc.claimName`; an input opts in with `data-field="source.url"` (several
// paths: space-separated). The error goes into that input's field container, the input gets
// `aria-invalid` and `aria-describedby`, and focus moves to it. An error naming no field, or a
// field no input claims, goes to the form's general message (`[data-form-message]`).

import { h } from './dom.js';

/** The UserError member of `result`, or null when `result` is the `expected` type. */
export function unionError(result, expected) {
  if (result && result.__typename === expected) return null;
  if (!result) return { type: 'Error', message: 'no result', field: null };
  return {
    type: result.__typename ?? 'Error',
    message: result.errorMessage ?? result.message ?? result.__typename,
    field: result.field ?? result.conflictField ?? null,
  };
}

/** The input in `form` claiming `field` (exactly, or the longest claimed prefix). */
export function inputFor(form, field) {
  if (!field) return null;
  const inputs = [...form.querySelectorAll('[data-field]')];
  let best = null;
  let bestLength = -1;
  for (const input of inputs) {
    if (input.disabled || input.closest('[hidden]')) continue;
    for (const path of input.dataset.field.split(/\s+/)) {
      const matches = field === path || field.startsWith(`${path}.`);
      if (matches && path.length > bestLength) {
        best = input;
        bestLength = path.length;
      }
    }
  }
  return best;
}

/** Removes every error `showError` put in `form`. */
export function clearErrors(form) {
  for (const node of form.querySelectorAll('.field-error')) node.remove();
  for (const input of form.querySelectorAll('[aria-invalid]')) {
    input.removeAttribute('aria-invalid');
    const described = (input.getAttribute('aria-describedby') ?? '')
      .split(/\s+/)
      .filter((id) => id && !id.startsWith('error-'));
    if (described.length) input.setAttribute('aria-describedby', described.join(' '));
    else input.removeAttribute('aria-describedby');
  }
  const general = form.querySelector('[data-form-message]');
  if (general) {
    general.textContent = '';
    delete general.dataset.kind;
  }
}

let errorSequence = 0;

/**
 * Shows `error` (from `unionError`, or any `{type, message, field}`) in `form`: next to the
 * input its field names, else in the form's general message. Returns the element it wrote.
 */
export function showError(form, error) {
  clearErrors(form);
  const input = inputFor(form, error.field);
  const text = `${error.type}: ${error.message}`;
  if (!input) {
    const general = form.querySelector('[data-form-message]');
    if (general) {
      general.textContent = error.field ? `${text} (${error.field})` : text;
      general.dataset.kind = 'error';
      general.dataset.errorType = error.type;
      return general;
    }
  }
  const target = input ?? form;
  errorSequence += 1;
  const id = `error-${errorSequence}`;
  const node = h(
    'p.field-error',
    { id, role: 'alert', dataset: { errorType: error.type, field: error.field ?? '' } },
    text,
  );
  const container = input?.closest('.field') ?? form;
  container.append(node);
  if (input) {
    input.setAttribute('aria-invalid', 'true');
    const described = input.getAttribute('aria-describedby');
    input.setAttribute('aria-describedby', described ? `${described} ${id}` : id);
    input.focus();
  }
  return node;
}

/**
 * Shows `result`'s union error in `form` and returns it; returns null (and clears old errors)
 * when `result` is the `expected` type.
 */
export function reportResult(form, result, expected) {
  const error = unionError(result, expected);
  if (error) showError(form, error);
  else clearErrors(form);
  return error;
}

/** Shows a general message (not tied to a field) in `form`. */
export function formMessage(form, text, kind = 'ok') {
  const general = form.querySelector('[data-form-message]');
  if (!general) return;
  general.textContent = text;
  general.dataset.kind = kind;
}

/**
 * Asks before a destructive action with a modal `<dialog>`: resolves true on the confirm
 * button, false on Cancel or Escape. Focus starts on Cancel (the safe choice) and returns to
 * where it was.
 */
export function confirmAction(text, { confirm = 'Delete', title = 'Are you sure?' } = {}) {
  const previous = document.activeElement;
  const cancelButton = h('button.ghost', { type: 'button', value: 'cancel', dataset: { confirm: 'cancel' } }, 'Cancel');
  const confirmButton = h('button.danger', { type: 'button', value: 'confirm', dataset: { confirm: 'confirm' } }, confirm);
  const heading = h('h2', { id: 'confirm-title' }, title);
  const body = h('p', { id: 'confirm-text' }, text);
  const dialog = h(
    'dialog.confirm',
    { 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-text' },
    heading,
    body,
    h('div.confirm-buttons', {}, cancelButton, confirmButton),
  );
  document.body.append(dialog);
  return new Promise((resolve) => {
    let answer = false;
    cancelButton.addEventListener('click', () => dialog.close());
    confirmButton.addEventListener('click', () => {
      answer = true;
      dialog.close();
    });
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (previous instanceof HTMLElement && previous.isConnected) previous.focus();
      resolve(answer);
    });
    dialog.showModal();
    cancelButton.focus();
  });
}
