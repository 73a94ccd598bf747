import { describe, expect, it } from 'vitest';
import { renderInto, renderMarkdown } from '../src/markdown';

describe('renderMarkdown', () => {
  it('renders Markdown', () => {
    const html = renderMarkdown('**bold** and `code`\n\n- a\n- b');
    expect(html).toContain('<strong>bold</strong>');
    expect(html).toContain('<code>code</code>');
    expect(html).toContain('<li>a</li>');
  });

  it('strips script, event handlers, javascript: links and frames', () => {
    const html = renderMarkdown(
      '<img src=x onerror="alert(1)"><script>alert(2)</script>' +
        '[x](javascript:alert(3)) <iframe src="https://e.com"></iframe><svg onload="alert(4)"></svg>' +
        '<a href="#" onclick="alert(5)">y</a><div style="position:fixed">z</div>',
    );
    expect(html).not.toMatch(/onerror|onload|onclick|<script|javascript:|<iframe|style=/i);
    expect(html).toContain('<img src="x">');
  });

  it('keeps code as text, so markup inside code cannot become HTML', () => {
    const el = document.createElement('div');
    renderInto(el, '```html\n<script>alert(1)</script>\n```');
    expect(el.querySelector('script')).toBeNull();
    expect(el.querySelector('pre code')!.textContent).toBe('<script>alert(1)</script>\n');
    expect(el.querySelector('button')!.getAttribute('aria-label')).toBe('Copy code');
  });

  it('marks links so they show their target', () => {
    const el = document.createElement('div');
    renderInto(el, '[docs](https://example.com/a)');
    const a = el.querySelector('a')!;
    expect(a.getAttribute('title')).toBe('https://example.com/a');
    expect(a.getAttribute('rel')).toBe('noopener noreferrer');
  });
});
