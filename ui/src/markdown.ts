// Model output is untrusted: Markdown is rendered by marked, then sanitised by DOMPurify
// before it touches the DOM; highlighting works on text content only.
import DOMPurify from 'dompurify';
import { marked } from 'marked';
import hljs from 'highlight.js/lib/common';

const purify = DOMPurify(window);

purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    // Links never navigate the app window; the URL stays visible on hover.
    const href = node.getAttribute('href') ?? '';
    node.setAttribute('title', href);
    node.setAttribute('rel', 'noopener noreferrer');
  }
});

/** Sanitised HTML for a Markdown string. */
export function renderMarkdown(text: string): string {
  const html = marked.parse(text, { async: false, gfm: true, breaks: true }) as string;
  return purify.sanitize(html, {
    FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'iframe', 'object', 'embed'],
    FORBID_ATTR: ['style'],
  });
}

/** Render into `el`: highlight code blocks and give each a copy button. */
export function renderInto(el: HTMLElement, text: string): void {
  el.innerHTML = renderMarkdown(text);
  for (const code of el.querySelectorAll<HTMLElement>('pre > code')) {
    hljs.highlightElement(code);
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'copy-code';
    button.textContent = 'Copy';
    button.setAttribute('aria-label', 'Copy code');
    button.addEventListener('click', () => {
      void navigator.clipboard?.writeText(code.textContent ?? '').then(() => {
        button.textContent = 'Copied';
        setTimeout(() => (button.textContent = 'Copy'), 1500);
      });
    });
    code.parentElement!.prepend(button);
  }
}
