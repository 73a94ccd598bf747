// The Local API server panel: the switch, the port, the URL and a `curl` to try it with.
import { api, type ApiServerStatus } from './api';
import { type Alerts, button, h } from './dom';

export class ApiServerView {
  private status: ApiServerStatus | null = null;
  readonly el = h('section', { class: 'settings api-server', 'aria-label': 'Local API server', hidden: '' });
  /** In the top bar: opens the panel, and says "on" while the server is serving. */
  readonly toggleButton = button('Local API server', 'API server', () => this.toggle());

  constructor(private readonly alerts: Alerts) {}

  /** Shows whether the server is on (it starts with the app when it was left on). */
  async start(): Promise<void> {
    try {
      this.show(await api.apiServerStatus());
    } catch (e) {
      this.alerts.error(e);
    }
  }

  toggle(): void {
    this.el.hidden = !this.el.hidden;
    if (!this.el.hidden) void this.start();
  }

  private async apply(enabled: boolean, port: number): Promise<void> {
    try {
      this.show(await api.setApiServer({ enabled, port }));
    } catch (e) {
      this.alerts.error(e);
      // The panel shows what is really running, not what was asked for.
      await this.start();
    }
  }

  private show(status: ApiServerStatus): void {
    this.status = status;
    const serving = status.url !== null;
    this.toggleButton.textContent = serving ? 'API server: on' : 'API server';
    this.toggleButton.classList.toggle('serving', serving);
    this.render();
  }

  private render(): void {
    const s = this.status;
    if (!s) return;
    const serve = h('input', { type: 'checkbox', role: 'switch', 'aria-label': 'Serve the API' });
    serve.checked = s.settings.enabled;
    const port = h('input', { type: 'number', min: '1', max: '65535', step: '1', 'aria-label': 'Port', value: String(s.settings.port) });
    serve.addEventListener('change', () => void this.apply(serve.checked, Number(port.value)));
    // A new port takes effect at once when the server is on, and is kept for when it is off.
    port.addEventListener('change', () => void this.apply(serve.checked, Number(port.value)));

    let state: HTMLElement;
    const parts: HTMLElement[] = [];
    if (s.url) {
      state = h('p', { class: 'api-state serving', role: 'status', text: `Serving at ${s.url} — loopback only: other computers cannot reach it.` });
      const example = s.curl ?? '';
      parts.push(
        h('div', { class: 'api-url' }, h('span', { text: 'Base URL' }), h('code', { 'aria-label': 'API base URL', text: s.url })),
        h('pre', { class: 'curl', 'aria-label': 'curl example' }, h('code', { text: example })),
        h('div', { class: 'actions' },
          button('Copy curl example', 'Copy curl', () => void navigator.clipboard?.writeText(example)),
          button('Copy base URL', 'Copy URL', () => void navigator.clipboard?.writeText(s.url!))),
      );
    } else if (s.error) {
      state = h('p', { class: 'api-state failed', role: 'status', 'data-kind': s.error.kind, text: `Not serving: ${s.error.message}` });
    } else {
      state = h('p', { class: 'api-state', role: 'status', text: 'Off.' });
    }
    this.el.replaceChildren(
      h('h2', { text: 'Local API server' }),
      h('p', { class: 'hint', text: 'An OpenAI-compatible API (/v1/chat/completions, /v1/models, /v1/audio/transcriptions) on this computer only, for editors, agents and scripts. It answers with the model loaded here; your chats and its requests take turns, one reply at a time.' }),
      h('div', { class: 'grid' },
        h('label', { class: 'switch' }, serve, h('span', { text: 'Serve the API on 127.0.0.1' })),
        h('label', {}, h('span', { text: 'Port' }), port)),
      state,
      ...parts,
      h('div', { class: 'actions' }, button('Close API server settings', 'Close', () => (this.el.hidden = true))),
    );
  }
}
