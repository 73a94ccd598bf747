// Chat settings: the open chat's system prompt and sampling, and its export.
import { api, type Conversation, type Sampling } from './api';
import { type Alerts, button, h } from './dom';

export interface ChatSettingsHooks {
  alerts: Alerts;
  /** The open chat, or null. */
  current(): Conversation | null;
  /** Reads the open chat again after its settings changed. */
  reload(): Promise<void>;
  /** The model's sampling, used by a chat with none of its own. */
  defaults(): Sampling;
}

export class ChatSettingsView {
  readonly el = h('section', { class: 'settings', 'aria-label': 'Chat settings', hidden: '' });

  constructor(private readonly hooks: ChatSettingsHooks) {}

  toggle(): void {
    this.el.hidden = !this.el.hidden;
    this.refresh();
  }

  /** Shows the open chat's settings again, if the panel is open. */
  refresh(): void {
    if (!this.el.hidden) this.render();
  }

  private render(): void {
    const { alerts } = this.hooks;
    const c = this.hooks.current();
    const s = c?.sampling ?? this.hooks.defaults();
    const field = (label: string, value: string, attrs: Record<string, string>) => {
      const input = h('input', { ...attrs, value, 'aria-label': label });
      return [h('label', {}, h('span', { text: label }), input), input] as const;
    };
    const prompt = h('textarea', { 'aria-label': 'System prompt', rows: '3', placeholder: 'e.g. Answer briefly.' });
    prompt.value = c?.systemPrompt ?? '';
    const [tLabel, t] = field('Temperature', String(s.temperature), { type: 'number', step: '0.05', min: '0', max: '10' });
    const [kLabel, k] = field('Top-k', s.topK == null ? '' : String(s.topK), { type: 'number', min: '1', step: '1' });
    const [pLabel, p] = field('Top-p', s.topP == null ? '' : String(s.topP), { type: 'number', min: '0.01', max: '1', step: '0.01' });
    const [mLabel, m] = field('Max tokens', String(s.maxNewTokens), { type: 'number', min: '1', step: '1' });
    const save = async () => {
      if (!c) return;
      try {
        const num = (v: string) => (v.trim() === '' ? null : Number(v));
        await api.setSystemPrompt(c.id, prompt.value);
        await api.setSampling(c.id, {
          temperature: Number(t.value),
          topK: num(k.value),
          topP: num(p.value),
          maxNewTokens: Number(m.value),
          seed: s.seed,
        });
        await this.hooks.reload();
        this.el.hidden = true;
      } catch (e) {
        alerts.error(e);
      }
    };
    const reset = async () => {
      if (!c) return;
      try {
        await api.setSampling(c.id, null);
        await this.hooks.reload();
        this.render();
      } catch (e) {
        alerts.error(e);
      }
    };
    const exportAs = async (format: 'markdown' | 'json') => {
      if (!c) return;
      try {
        const out = await api.exportConversation(c.id, format);
        alerts.notice(`Saved to ${out.path}`);
      } catch (e) {
        alerts.error(e);
      }
    };
    this.el.replaceChildren(
      h('h2', { text: 'Chat settings' }),
      h('label', { class: 'wide' }, h('span', { text: 'System prompt' }), prompt),
      h('div', { class: 'grid' }, tLabel, kLabel, pLabel, mLabel),
      h(
        'div',
        { class: 'actions' },
        button('Save settings', 'Save', () => void save(), 'primary'),
        button('Reset to model defaults', 'Model defaults', () => void reset()),
        button('Export Markdown', 'Export Markdown', () => void exportAs('markdown')),
        button('Export JSON', 'Export JSON', () => void exportAs('json')),
      ),
    );
    for (const b of this.el.querySelectorAll('button')) if (!c) b.disabled = true;
  }
}
