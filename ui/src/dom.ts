// DOM helpers shared by the views: element building, buttons, the in-page question, alerts.
import { asAppError, type AppError } from './api';

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<Record<string, string>> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined) continue;
    if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

export function button(label: string, text: string, onClick: () => void, cls = ''): HTMLButtonElement {
  const b = h('button', { type: 'button', 'aria-label': label, title: label, class: cls, text });
  b.addEventListener('click', onClick);
  return b;
}

/**
 * A yes/no question in a modal of the page. Not `window.confirm`: the dialog plugin replaces it
 * with its message dialog, which the capability does not grant (only the folder picker is).
 */
export function ask(question: string, yes: string, yesLabel: string): Promise<boolean> {
  const dialog = h('dialog', { 'aria-label': question });
  dialog.append(
    h('p', { text: question }),
    h('div', { class: 'actions' }, button('Cancel', 'Cancel', () => dialog.close()), button(yesLabel, yes, () => dialog.close('yes'), 'danger')),
  );
  document.body.append(dialog);
  dialog.showModal();
  return new Promise((resolve) =>
    // Esc closes it too, with no answer.
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(dialog.returnValue === 'yes');
    }),
  );
}

/** The strip of notes above the messages: errors (kept 15 s) and notices (8 s). */
export class Alerts {
  readonly el = h('div', { class: 'alerts', role: 'alert' });

  error(e: unknown): void {
    const err: AppError = asAppError(e);
    const note = h('div', { class: `alert alert-${err.kind}`, 'data-kind': err.kind }, h('span', { text: err.message }));
    note.append(button('Dismiss', '×', () => note.remove(), 'icon'));
    this.el.append(note);
    setTimeout(() => note.remove(), 15000);
  }

  notice(text: string): void {
    const note = h('div', { class: 'alert alert-info', role: 'status', text });
    this.el.append(note);
    setTimeout(() => note.remove(), 8000);
  }
}
