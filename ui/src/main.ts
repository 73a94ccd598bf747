// Gemma Chat UI: plain TypeScript and the DOM (see ui/README.md for why no framework).
import { listen } from '@tauri-apps/api/event';
import './styles.css';
import {
  api,
  asAppError,
  type AppError,
  type Attachment,
  type Conversation,
  type ConversationSummary,
  type DownloadEvent,
  type DownloadProgress,
  type LoadSettings,
  type ModelChoice,
  type ModelsOverview,
  type ModelStatus,
  type Sampling,
  type StoredMessage,
  type StreamEvent,
} from './api';
import { formatBytes, formatDownload, formatDuration, formatStats, keyAction, kindOfFile, statusNote } from './format';
import { renderInto } from './markdown';

function h<K extends keyof HTMLElementTagNameMap>(
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

function button(label: string, text: string, onClick: () => void, cls = ''): HTMLButtonElement {
  const b = h('button', { type: 'button', 'aria-label': label, title: label, class: cls, text });
  b.addEventListener('click', onClick);
  return b;
}

/**
 * A yes/no question in a modal of the page. Not `window.confirm`: the dialog plugin replaces it
 * with its message dialog, which the capability does not grant (only the folder picker is).
 */
function ask(question: string, yes: string, yesLabel: string): Promise<boolean> {
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

class ChatApp {
  private conversations: ConversationSummary[] = [];
  private current: Conversation | null = null;
  private model: ModelStatus = { state: 'loading', path: '', progress: 0 };
  private overview: ModelsOverview | null = null;
  /** The download this window started: its model, last progress and how it ended. */
  private download: { id: string; progress: DownloadProgress | null } | null = null;
  private pending: Attachment[] = [];
  /** The reply being streamed: its message id, element and text so far. */
  private streaming: { conversationId: number; id: number; text: string; body: HTMLElement | null } | null = null;
  private recording: { started: number; timer: number } | null = null;
  private renderQueued = false;
  private mediaUrls = new Map<string, string>();

  // Fixed parts of the page.
  private list = h('ul', { class: 'chat-list', 'aria-label': 'Chats' });
  private search = h('input', { type: 'search', 'aria-label': 'Search chats', placeholder: 'Search chats' });
  private title = h('h1', { class: 'chat-title' });
  private modelBadge = h('span', { class: 'model-badge', role: 'status' });
  private log = h('div', { class: 'messages', role: 'log', 'aria-live': 'polite', 'aria-label': 'Messages' });
  private tray = h('div', { class: 'tray', 'aria-label': 'Attachments to send' });
  private input = h('textarea', { 'aria-label': 'Message', placeholder: 'Message Gemma — Enter to send, Shift+Enter for a new line', rows: '1' });
  private fileInput = h('input', { type: 'file', accept: 'image/*,audio/*', multiple: '', hidden: '', 'aria-label': 'Choose files to attach' });
  private sendButton = button('Send', 'Send', () => void this.send(), 'primary');
  private stopButton = button('Stop', 'Stop', () => void this.stop(), 'danger');
  private recordButton = button('Record', 'Record', () => void this.toggleRecording(), 'icon');
  private meter = h('span', { class: 'meter', role: 'meter', 'aria-label': 'Input level', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0' }, h('span', { class: 'meter-fill' }));
  private timer = h('span', { class: 'timer', 'aria-label': 'Recording time', text: '0:00' });
  private alerts = h('div', { class: 'alerts', role: 'alert' });
  private settings = h('section', { class: 'settings', 'aria-label': 'Chat settings', hidden: '' });
  private models = h('section', { class: 'settings models', 'aria-label': 'Models', hidden: '' });
  private dropOverlay = h('div', { class: 'drop-overlay', hidden: '', text: 'Drop images or audio to attach' });

  async start(root: HTMLElement): Promise<void> {
    root.append(this.layout());
    this.wireEvents();
    // The model thread announces every status change. An event can overtake a command's
    // response, so the status asked for here is shown only if no newer event came first.
    let heard = false;
    await listen<ModelStatus>('model-status', (e) => {
      heard = true;
      this.setModel(e.payload);
    }).catch(() => undefined);
    const status = await api.modelStatus();
    if (!heard) this.setModel(status);
    await this.refreshModels();
    // First run: nothing but the demo model, so offer the real ones.
    if (this.overview && this.overview.choices.every((c) => !c.localPath) && !(this.model.state === 'ready' && !this.model.model.demo)) {
      this.models.hidden = false;
    }
    await this.refreshList();
    if (this.conversations.length > 0) await this.open(this.conversations[0].id);
    else this.renderConversation();
    this.input.focus();
  }

  private layout(): HTMLElement {
    this.stopButton.hidden = true;
    this.meter.hidden = true;
    this.timer.hidden = true;
    const sidebar = h(
      'nav',
      { class: 'sidebar', 'aria-label': 'Conversations' },
      h('div', { class: 'brand', text: 'Gemma Chat' }),
      button('New chat', '+ New chat', () => void this.newChat(), 'primary wide'),
      this.search,
      this.list,
    );
    const header = h(
      'header',
      { class: 'topbar' },
      this.title,
      this.modelBadge,
      button('Models', 'Models', () => this.toggleModels()),
      button('Chat settings', 'Settings', () => this.toggleSettings()),
    );
    const attach = button('Attach', 'Attach', () => this.fileInput.click());
    const composer = h(
      'footer',
      { class: 'composer' },
      this.tray,
      h('div', { class: 'composer-row' }, attach, this.recordButton, this.meter, this.timer, this.input, this.sendButton, this.stopButton),
      this.fileInput,
    );
    const main = h('main', { class: 'main' }, header, this.models, this.settings, this.alerts, this.log, composer);
    return h('div', { class: 'shell' }, sidebar, main, this.dropOverlay);
  }

  private wireEvents(): void {
    this.search.addEventListener('input', () => void this.refreshList());
    this.input.addEventListener('input', () => this.autosize());
    this.input.addEventListener('keydown', (e) => {
      if (keyAction(e, true) === 'send') {
        e.preventDefault();
        void this.send();
      }
    });
    window.addEventListener('keydown', (e) => {
      const action = keyAction(e, false);
      if (action === 'stop' && this.streaming) {
        e.preventDefault();
        void this.stop();
      } else if (action === 'newChat') {
        e.preventDefault();
        void this.newChat();
      }
    });
    this.fileInput.addEventListener('change', () => {
      void this.attachFiles([...(this.fileInput.files ?? [])]);
      this.fileInput.value = '';
    });
    window.addEventListener('paste', (e) => {
      const files = [...(e.clipboardData?.files ?? [])];
      if (files.length > 0) {
        e.preventDefault();
        void this.attachFiles(files);
      }
    });
    let depth = 0;
    window.addEventListener('dragenter', (e) => {
      e.preventDefault();
      depth++;
      this.dropOverlay.hidden = false;
    });
    window.addEventListener('dragover', (e) => e.preventDefault());
    window.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) this.dropOverlay.hidden = true;
    });
    window.addEventListener('drop', (e) => {
      e.preventDefault();
      depth = 0;
      this.dropOverlay.hidden = true;
      void this.attachFiles([...(e.dataTransfer?.files ?? [])]);
    });
    // Push-to-talk: holding the button records until release; a click toggles.
    let pressed = 0;
    this.recordButton.addEventListener('pointerdown', () => {
      pressed = Date.now();
    });
    this.recordButton.addEventListener('pointerup', () => {
      if (this.recording && pressed && Date.now() - pressed > 400 && Date.now() - this.recording.started > 400) {
        void this.toggleRecording();
      }
      pressed = 0;
    });
    // Links in model output never navigate the app window.
    this.log.addEventListener('click', (e) => {
      if ((e.target as HTMLElement).closest('.content a')) e.preventDefault();
    });
  }

  private autosize(): void {
    this.input.style.height = 'auto';
    this.input.style.height = `${Math.min(this.input.scrollHeight, 240)}px`;
  }

  private showError(e: unknown): void {
    const err: AppError = asAppError(e);
    const note = h('div', { class: `alert alert-${err.kind}`, 'data-kind': err.kind }, h('span', { text: err.message }));
    note.append(button('Dismiss', '×', () => note.remove(), 'icon'));
    this.alerts.append(note);
    setTimeout(() => note.remove(), 15000);
  }

  // ---- Model ----

  private setModel(status: ModelStatus): void {
    this.model = status;
    this.modelBadge.className = 'model-badge';
    if (status.state === 'loading') {
      this.modelBadge.textContent = `Loading model… ${Math.floor(status.progress * 100)}%`;
      this.modelBadge.classList.add('loading');
    } else if (status.state === 'ready') {
      this.modelBadge.textContent = status.model.demo ? 'Demo model — replies are noise' : status.model.name;
      this.modelBadge.title = status.model.path;
      if (status.model.demo) this.modelBadge.classList.add('demo');
    } else {
      this.modelBadge.textContent = 'No model loaded';
      this.modelBadge.classList.add('failed');
      this.showError(status.error);
    }
    if (!this.settings.hidden) this.renderSettings();
    if (!this.models.hidden && status.state !== 'loading') void this.refreshModels();
  }

  private defaults(): Sampling {
    return this.model.state === 'ready'
      ? this.model.model.defaults
      : { temperature: 1, topK: 64, topP: 0.95, maxNewTokens: 512, seed: 0 };
  }

  // ---- Conversations ----

  private async refreshList(): Promise<void> {
    try {
      this.conversations = await api.listConversations(this.search.value);
    } catch (e) {
      this.showError(e);
      return;
    }
    this.list.replaceChildren(
      ...this.conversations.map((c) => {
        const open = button(`Open chat ${c.title}`, c.title, () => void this.open(c.id), 'chat-link');
        if (this.current?.id === c.id) open.setAttribute('aria-current', 'page');
        const rename = button('Rename chat', 'Rename', () => void this.rename(c), 'icon small');
        const del = button('Delete chat', 'Delete', () => void this.remove(c), 'icon small');
        return h('li', { class: 'chat-item', 'data-id': String(c.id) }, open, rename, del);
      }),
    );
  }

  private async newChat(): Promise<void> {
    try {
      const c = await api.createConversation();
      this.search.value = '';
      await this.refreshList();
      await this.open(c.id);
      this.input.focus();
    } catch (e) {
      this.showError(e);
    }
  }

  private async open(id: number): Promise<void> {
    try {
      this.current = await api.getConversation(id);
    } catch (e) {
      this.showError(e);
      return;
    }
    this.renderConversation();
    await this.refreshList();
  }

  private async rename(c: ConversationSummary): Promise<void> {
    const item = this.list.querySelector(`[data-id="${c.id}"]`);
    if (!item) return;
    const field = h('input', { type: 'text', 'aria-label': 'Chat name', value: c.title });
    item.replaceChildren(field);
    field.focus();
    field.select();
    let done = false;
    const finish = async (save: boolean) => {
      if (done) return;
      done = true;
      if (save && field.value.trim() && field.value !== c.title) {
        try {
          await api.renameConversation(c.id, field.value.trim());
          if (this.current?.id === c.id) {
            this.current.title = field.value.trim();
            this.title.textContent = this.current.title;
          }
        } catch (e) {
          this.showError(e);
        }
      }
      await this.refreshList();
    };
    field.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') void finish(true);
      if (e.key === 'Escape') {
        e.stopPropagation();
        void finish(false);
      }
    });
    field.addEventListener('blur', () => void finish(true));
  }

  private async remove(c: ConversationSummary): Promise<void> {
    if (!(await ask(`Delete “${c.title}”? This cannot be undone.`, 'Delete', 'Confirm delete'))) return;
    try {
      await api.deleteConversation(c.id);
      if (this.current?.id === c.id) {
        this.current = null;
        this.renderConversation();
      }
      await this.refreshList();
    } catch (e) {
      this.showError(e);
    }
  }

  // ---- Messages ----

  private renderConversation(): void {
    const c = this.current;
    this.title.textContent = c ? c.title : 'Gemma Chat';
    this.log.replaceChildren();
    if (!c) {
      this.log.append(h('p', { class: 'empty', text: 'Start a new chat: type a message, drop an image or audio file, or press Record.' }));
    } else {
      const lastAssistant = [...c.messages].reverse().find((m) => m.role === 'assistant');
      for (const m of c.messages) this.log.append(this.messageView(m, m.id === lastAssistant?.id));
    }
    if (!this.settings.hidden) this.renderSettings();
    this.scrollToEnd();
  }

  private messageView(m: StoredMessage, isLastReply: boolean): HTMLElement {
    const el = h('article', { class: `message ${m.role}`, 'data-id': String(m.id), 'data-status': m.status, 'aria-label': m.role === 'user' ? 'Your message' : 'Reply' });
    el.append(h('div', { class: 'who', text: m.role === 'user' ? 'You' : 'Gemma' }));
    if (m.attachments.length > 0) {
      const media = h('div', { class: 'media' });
      for (const a of m.attachments) media.append(this.mediaView(a));
      el.append(media);
    }
    const body = h('div', { class: 'content' });
    if (m.role === 'assistant') renderInto(body, m.text);
    else body.textContent = m.text;
    if (m.text || m.role === 'assistant') el.append(body);
    if (m.error) el.append(h('div', { class: 'reply-error', role: 'note', text: m.error }));
    const note = statusNote(m.status);
    if (note) el.append(h('div', { class: 'note', text: note }));
    if (m.stats) el.append(h('div', { class: 'stats', text: formatStats(m.stats) }));
    const actions = h('div', { class: 'actions' });
    if (m.role === 'user') actions.append(button('Edit message', 'Edit', () => this.edit(el, m)));
    if (m.role === 'assistant') {
      actions.append(button('Copy reply', 'Copy', () => void navigator.clipboard?.writeText(m.text)));
      if (isLastReply && m.status !== 'streaming') actions.append(button('Regenerate', 'Regenerate', () => void this.regenerate()));
    }
    el.append(actions);
    return el;
  }

  private mediaView(a: Attachment): HTMLElement {
    const el =
      a.kind === 'image'
        ? h('img', { class: 'thumb', alt: a.name, title: a.name })
        : h('audio', { controls: '', preload: 'metadata', 'aria-label': `Audio: ${a.name}` });
    void this.mediaUrl(a).then(
      (url) => {
        (el as HTMLImageElement | HTMLAudioElement).src = url;
      },
      (e) => this.showError(e),
    );
    return a.kind === 'image' ? el : h('figure', { class: 'audio' }, el, h('figcaption', { text: a.name }));
  }

  private async mediaUrl(a: Attachment): Promise<string> {
    let url = this.mediaUrls.get(a.hash);
    if (!url) {
      const bytes = await api.readAttachment(a);
      url = URL.createObjectURL(new Blob([bytes], { type: a.mime }));
      this.mediaUrls.set(a.hash, url);
    }
    return url;
  }

  private scrollToEnd(): void {
    this.log.scrollTop = this.log.scrollHeight;
  }

  private setGenerating(on: boolean): void {
    this.sendButton.hidden = on;
    this.stopButton.hidden = !on;
    for (const b of this.log.querySelectorAll<HTMLButtonElement>('[aria-label="Regenerate"], [aria-label="Edit message"]')) b.disabled = on;
  }

  private onEvent(conversationId: number, e: StreamEvent): void {
    const s = this.streaming;
    if (!s || s.conversationId !== conversationId) return;
    if (e.event === 'token') {
      s.text += e.text;
      if (!this.renderQueued) {
        this.renderQueued = true;
        requestAnimationFrame(() => {
          this.renderQueued = false;
          if (this.streaming?.body) {
            renderInto(this.streaming.body, this.streaming.text);
            this.scrollToEnd();
          }
        });
      }
      return;
    }
    this.streaming = null;
    this.setGenerating(false);
    if (this.current?.id === conversationId) void this.open(conversationId);
    if (e.event === 'error') this.showError(e.error);
  }

  /** Run a command that starts a reply, then show the conversation with the empty reply. */
  private async startReply(conversationId: number, start: (onEvent: (e: StreamEvent) => void) => Promise<{ replyId: number }>): Promise<boolean> {
    if (this.streaming) {
      this.showError({ kind: 'busy', message: 'A reply is already being generated. Stop it or wait for it to finish.' });
      return false;
    }
    const s = { conversationId, id: -1, text: '', body: null as HTMLElement | null };
    this.streaming = s;
    this.setGenerating(true);
    try {
      const started = await start((e) => this.onEvent(conversationId, e));
      s.id = started.replyId;
    } catch (e) {
      this.streaming = null;
      this.setGenerating(false);
      this.showError(e);
      return false;
    }
    if (this.streaming !== s) return true; // already finished
    this.current = await api.getConversation(conversationId);
    this.renderConversation();
    s.body = this.log.querySelector<HTMLElement>(`[data-id="${s.id}"] .content`);
    if (s.body && s.text) renderInto(s.body, s.text);
    this.setGenerating(true);
    await this.refreshList();
    return true;
  }

  private async send(): Promise<void> {
    const text = this.input.value;
    if (!text.trim() && this.pending.length === 0) return;
    if (!this.current) {
      try {
        const c = await api.createConversation();
        this.current = await api.getConversation(c.id);
      } catch (e) {
        this.showError(e);
        return;
      }
    }
    const attachments = this.pending;
    const ok = await this.startReply(this.current.id, (onEvent) => api.sendMessage(this.current!.id, text, attachments, onEvent));
    if (ok) {
      this.input.value = '';
      this.autosize();
      this.pending = [];
      this.renderTray();
    }
  }

  private async stop(): Promise<void> {
    try {
      await api.stopGeneration();
    } catch (e) {
      this.showError(e);
    }
  }

  private async regenerate(): Promise<void> {
    if (!this.current) return;
    const id = this.current.id;
    await this.startReply(id, (onEvent) => api.regenerate(id, onEvent));
  }

  private edit(el: HTMLElement, m: StoredMessage): void {
    if (!this.current || this.streaming) return;
    const id = this.current.id;
    let body = el.querySelector('.content');
    if (!body) {
      body = h('div', { class: 'content' });
      el.querySelector('.actions')!.before(body);
    }
    const field = h('textarea', { 'aria-label': 'Edit message text', rows: '3' });
    field.value = m.text;
    const save = button('Save and resend', 'Save & resend', () => void this.startReply(id, (onEvent) => api.editAndResend(id, m.id, field.value, onEvent)), 'primary');
    const cancel = button('Cancel edit', 'Cancel', () => this.renderConversation());
    body.replaceChildren(field, h('div', { class: 'actions' }, save, cancel));
    field.focus();
  }

  // ---- Attachments and recording ----

  private async attachFiles(files: File[]): Promise<void> {
    for (const file of files) {
      if (!kindOfFile(file)) {
        this.showError({ kind: 'attachment', message: `${file.name} is not an image or audio file` });
        continue;
      }
      try {
        this.pending.push(await api.saveAttachment(file, file.name));
      } catch (e) {
        this.showError(e);
      }
    }
    this.renderTray();
  }

  private renderTray(): void {
    this.tray.replaceChildren(
      ...this.pending.map((a, i) => {
        const item = h('div', { class: 'tray-item', 'data-kind': a.kind }, this.mediaView(a));
        item.append(
          button(`Remove ${a.name}`, '×', () => {
            this.pending.splice(i, 1);
            this.renderTray();
          }, 'icon small remove'),
        );
        return item;
      }),
    );
  }

  private async toggleRecording(): Promise<void> {
    if (this.recording) {
      clearInterval(this.recording.timer);
      this.recording = null;
      this.showRecording(false);
      try {
        this.pending.push(await api.stopRecording());
        this.renderTray();
      } catch (e) {
        this.showError(e);
      }
      return;
    }
    try {
      await api.startRecording((level) => {
        const pct = Math.round(Math.min(1, Math.max(0, level)) * 100);
        this.meter.setAttribute('aria-valuenow', String(pct));
        (this.meter.firstElementChild as HTMLElement).style.width = `${pct}%`;
      });
    } catch (e) {
      this.showError(e);
      return;
    }
    const started = Date.now();
    this.recording = {
      started,
      timer: window.setInterval(() => (this.timer.textContent = formatDuration(Date.now() - started)), 250),
    };
    this.showRecording(true);
  }

  private showRecording(on: boolean): void {
    this.recordButton.setAttribute('aria-pressed', String(on));
    this.recordButton.classList.toggle('recording', on);
    this.meter.hidden = !on;
    this.timer.hidden = !on;
    this.timer.textContent = '0:00';
  }

  // ---- Settings ----

  private toggleSettings(): void {
    this.settings.hidden = !this.settings.hidden;
    if (!this.settings.hidden) this.renderSettings();
  }

  private renderSettings(): void {
    const c = this.current;
    const s = c?.sampling ?? this.defaults();
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
        this.current = await api.getConversation(c.id);
        this.settings.hidden = true;
      } catch (e) {
        this.showError(e);
      }
    };
    const reset = async () => {
      if (!c) return;
      try {
        await api.setSampling(c.id, null);
        this.current = await api.getConversation(c.id);
        this.renderSettings();
      } catch (e) {
        this.showError(e);
      }
    };
    const exportAs = async (format: 'markdown' | 'json') => {
      if (!c) return;
      try {
        const out = await api.exportConversation(c.id, format);
        const note = h('div', { class: 'alert alert-info', role: 'status', text: `Saved to ${out.path}` });
        this.alerts.append(note);
        setTimeout(() => note.remove(), 8000);
      } catch (e) {
        this.showError(e);
      }
    };
    this.settings.replaceChildren(
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
    for (const b of this.settings.querySelectorAll('button')) if (!c) b.disabled = true;
  }

  // ---- Models: download, token, local folder, load settings ----

  private toggleModels(): void {
    this.models.hidden = !this.models.hidden;
    if (!this.models.hidden) void this.refreshModels();
  }

  private async refreshModels(): Promise<void> {
    try {
      this.overview = await api.modelsOverview();
    } catch (e) {
      this.showError(e);
      return;
    }
    this.renderModels();
  }

  /** The load's progress and end come as "model-status" events, maybe before this returns. */
  private async openModel(path: string): Promise<void> {
    try {
      await api.openModel(path);
    } catch (e) {
      this.showError(e);
    }
  }

  private async pickModelFolder(): Promise<void> {
    try {
      const path = await api.pickModelFolder();
      if (path !== null) await this.openModel(path);
    } catch (e) {
      this.showError(e);
    }
  }

  private async startDownload(choice: ModelChoice): Promise<void> {
    this.download = { id: choice.id, progress: null };
    this.renderModels();
    const onEvent = (e: DownloadEvent) => {
      if (e.event === 'progress') {
        if (this.download) this.download.progress = e.progress;
        this.renderDownload();
        return;
      }
      this.download = null;
      if (e.event === 'done') void this.openModel(e.path);
      if (e.event === 'error') this.showError(e.error);
      void this.refreshModels();
    };
    try {
      await api.downloadModel(choice.id, onEvent);
    } catch (e) {
      this.download = null;
      this.showError(e);
      void this.refreshModels();
    }
  }

  // Built once and updated in place, so Cancel stays clickable while progress streams in.
  private downloadTitle = h('span');
  private downloadMeter = h('progress', { 'aria-label': 'Download progress', max: '1', value: '0' });
  private downloadText = h('span', { class: 'download-text' });
  private downloadBar = h(
    'div',
    { class: 'download', hidden: '' },
    this.downloadTitle,
    this.downloadMeter,
    this.downloadText,
    button('Cancel download', 'Cancel download', () => void api.cancelDownload().catch((e) => this.showError(e)), 'danger'),
  );

  private renderDownload(): void {
    const d = this.download;
    this.downloadBar.hidden = !d;
    if (!d) return;
    const p = d.progress;
    this.downloadTitle.textContent = `Downloading ${d.id}`;
    this.downloadMeter.max = p?.totalBytes || 1;
    this.downloadMeter.value = p?.doneBytes ?? 0;
    this.downloadText.textContent = p ? `${formatDownload(p)} — ${p.file}` : 'Starting…';
  }

  private renderModels(): void {
    const o = this.overview;
    if (!o) return;
    if (!this.download && o.downloading) this.download = { id: o.downloading, progress: null };
    const busy = this.download !== null;
    const cards = o.choices.map((c) => {
      const missing = c.downloadBytes - c.partialBytes;
      const fits = o.freeBytes == null || o.freeBytes >= missing;
      const short = c.label.split(' (')[0];
      const ram = c.ram.map((r) => `${r.weights} ${r.measured ? '' : '~'}${formatBytes(r.bytes)}`).join(' · ');
      let action: HTMLElement;
      if (c.localPath) {
        action = button(`Use ${short}`, 'Use', () => void this.openModel(c.localPath!), 'primary');
      } else {
        const verb = c.partialBytes > 0 ? 'Resume download' : 'Download';
        action = button(`${verb} ${short}`, verb, () => void this.startDownload(c), 'primary');
        // An estimate: the backend checks the real sizes and refuses what cannot fit.
        (action as HTMLButtonElement).disabled = busy;
      }
      return h(
        'div',
        { class: 'model-card', 'aria-label': short },
        h('strong', { text: c.label }),
        h('span', { text: c.id }),
        h('span', { text: `Download ${formatBytes(c.downloadBytes)}${c.partialBytes > 0 ? ` (${formatBytes(c.partialBytes)} already here)` : ''}` }),
        h('span', { text: `Memory by weight format (~ estimated): ${ram}` }),
        h('span', { class: 'model-state', text: c.localPath ? 'On this computer — works offline' : fits ? 'Not downloaded' : `Not enough free disk space (needs ${formatBytes(missing)})` }),
        action,
      );
    });

    const token = h('input', { type: 'password', 'aria-label': 'Hugging Face token', placeholder: o.token.saved ? 'Token saved' : 'hf_…', autocomplete: 'off' });
    const saveToken = async () => {
      try {
        const state = await api.saveToken(token.value);
        if (this.overview) this.overview.token = state;
        this.renderModels();
      } catch (e) {
        this.showError(e);
      }
    };
    const forgetToken = async () => {
      try {
        const state = await api.forgetToken();
        if (this.overview) this.overview.token = state;
        this.renderModels();
      } catch (e) {
        this.showError(e);
      }
    };
    const tokenNote = o.token.message ?? (o.token.saved ? 'Saved in the system keychain.' : 'The Gemma repos are gated: accept the licence on huggingface.co, then paste a read token.');

    const folder = h('input', { type: 'text', 'aria-label': 'Model folder', placeholder: '/path/to/gemma-3n-E2B-it' });
    if (this.model.state === 'ready' && !this.model.model.demo) folder.value = this.model.model.path;

    const weights = h('select', { 'aria-label': 'Weight format' });
    for (const [value, text] of [['f32', 'f32 (dense, exact)'], ['bf16', 'bf16'], ['q8_0', 'q8_0 (8-bit)'], ['q4k', 'q4k (4-bit, smallest)']]) {
      weights.append(h('option', { value, text }));
    }
    weights.value = o.loadSettings.weights;
    const threads = h('input', { type: 'number', min: '1', step: '1', 'aria-label': 'Threads', placeholder: 'one per core' });
    threads.value = o.loadSettings.threads == null ? '' : String(o.loadSettings.threads);
    const saveLoad = async (reload: boolean) => {
      const settings: LoadSettings = { weights: weights.value as LoadSettings['weights'], threads: threads.value.trim() === '' ? null : Number(threads.value) };
      try {
        await api.setLoadSettings(settings);
        if (this.overview) this.overview.loadSettings = settings;
        if (reload && this.model.state === 'ready') await this.openModel(this.model.model.path);
      } catch (e) {
        this.showError(e);
      }
    };

    this.renderDownload();
    this.models.replaceChildren(
      h('h2', { text: 'Models' }),
      h('p', { class: 'hint', text: `Free disk space: ${o.freeBytes == null ? 'unknown' : formatBytes(o.freeBytes)} in ${o.cacheDir}` }),
      h('div', { class: 'model-cards' }, ...cards),
      this.downloadBar,
      h('div', { class: 'grid' }, h('label', {}, h('span', { text: 'Hugging Face token' }), token),
        h('div', { class: 'actions' }, button('Save token', 'Save token', () => void saveToken()), button('Forget token', 'Forget token', () => void forgetToken()))),
      h('p', { class: 'hint token-note', text: tokenNote }),
      h('h2', { text: 'Local model' }),
      h('div', { class: 'actions' }, button('Open model folder', 'Open model folder…', () => void this.pickModelFolder(), 'primary')),
      // Typing the path works where no native dialog can be shown (and in the E2E tests).
      h('div', { class: 'grid' }, h('label', {}, h('span', { text: 'Or type its path' }), folder),
        button('Open the typed model folder', 'Open', () => void this.openModel(folder.value.trim()))),
      h('h2', { text: 'Loading' }),
      h('div', { class: 'grid' }, h('label', {}, h('span', { text: 'Weight format' }), weights), h('label', {}, h('span', { text: 'Threads' }), threads)),
      h('div', { class: 'actions' },
        button('Save load settings', 'Save', () => void saveLoad(false), 'primary'),
        button('Reload model with these settings', 'Save and reload', () => void saveLoad(true)),
        button('Close models', 'Close', () => (this.models.hidden = true))),
    );
  }
}

void new ChatApp().start(document.getElementById('app')!);
