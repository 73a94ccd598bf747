// The conversation view: the chat list in the sidebar, the open chat's messages, and the reply
// streaming into it.
import { api, type Attachment, type Conversation, type ConversationSummary, type ReplyStats, type StoredMessage, type StreamEvent } from './api';
import { type Alerts, ask, button, h } from './dom';
import { formatStats, statusNote } from './format';
import { renderInto } from './markdown';
import { mediaView } from './media';

export interface ConversationHooks {
  alerts: Alerts;
  /** A reply started or ended: the composer swaps Send and Stop. */
  onGenerating(on: boolean): void;
  /** Another conversation (or a new state of this one) is on screen. */
  onShown(): void;
  /** A reply finished, with its speed. */
  onReplyDone(stats: ReplyStats): void;
}

type StartReply = (onEvent: (e: StreamEvent) => void) => Promise<{ replyId: number }>;

export class ConversationView {
  private conversations: ConversationSummary[] = [];
  private currentChat: Conversation | null = null;
  /** The reply being streamed: its message id, element and text so far. */
  private streaming: { conversationId: number; id: number; text: string; body: HTMLElement | null; waiting: boolean } | null = null;
  private renderQueued = false;

  readonly list = h('ul', { class: 'chat-list', 'aria-label': 'Chats' });
  readonly search = h('input', { type: 'search', 'aria-label': 'Search chats', placeholder: 'Search chats' });
  readonly title = h('h1', { class: 'chat-title' });
  readonly log = h('div', { class: 'messages', role: 'log', 'aria-live': 'polite', 'aria-label': 'Messages' });

  constructor(private readonly hooks: ConversationHooks) {
    this.search.addEventListener('input', () => void this.refreshList());
    // Links in model output never navigate the app window.
    this.log.addEventListener('click', (e) => {
      if ((e.target as HTMLElement).closest('.content a')) e.preventDefault();
    });
  }

  get current(): Conversation | null {
    return this.currentChat;
  }

  get isStreaming(): boolean {
    return this.streaming !== null;
  }

  /** The sidebar; `newChat` is what its "New chat" button does. */
  sidebar(newChat: () => void): HTMLElement {
    return h(
      'nav',
      { class: 'sidebar', 'aria-label': 'Conversations' },
      h('div', { class: 'brand', text: 'Gemma Chat' }),
      button('New chat', '+ New chat', newChat, 'primary wide'),
      this.search,
      this.list,
    );
  }

  /** Opens the most recent chat, if there is one. */
  async start(): Promise<void> {
    await this.refreshList();
    if (this.conversations.length > 0) await this.open(this.conversations[0].id);
    else this.render();
  }

  async refreshList(): Promise<void> {
    try {
      this.conversations = await api.listConversations(this.search.value);
    } catch (e) {
      this.hooks.alerts.error(e);
      return;
    }
    this.list.replaceChildren(
      ...this.conversations.map((c) => {
        const open = button(`Open chat ${c.title}`, c.title, () => void this.open(c.id), 'chat-link');
        if (this.currentChat?.id === c.id) open.setAttribute('aria-current', 'page');
        const rename = button('Rename chat', 'Rename', () => void this.rename(c), 'icon small');
        const del = button('Delete chat', 'Delete', () => void this.remove(c), 'icon small');
        return h('li', { class: 'chat-item', 'data-id': String(c.id) }, open, rename, del);
      }),
    );
  }

  async newChat(): Promise<boolean> {
    try {
      const c = await api.createConversation();
      this.search.value = '';
      await this.refreshList();
      await this.open(c.id);
      return true;
    } catch (e) {
      this.hooks.alerts.error(e);
      return false;
    }
  }

  async open(id: number): Promise<void> {
    try {
      this.currentChat = await api.getConversation(id);
    } catch (e) {
      this.hooks.alerts.error(e);
      return;
    }
    this.render();
    await this.refreshList();
  }

  /** Reads the open chat again (after its settings changed), without re-rendering it. */
  async reloadCurrent(): Promise<void> {
    if (this.currentChat) this.currentChat = await api.getConversation(this.currentChat.id);
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
          if (this.currentChat?.id === c.id) {
            this.currentChat.title = field.value.trim();
            this.title.textContent = this.currentChat.title;
          }
        } catch (e) {
          this.hooks.alerts.error(e);
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
      if (this.currentChat?.id === c.id) {
        this.currentChat = null;
        this.render();
      }
      await this.refreshList();
    } catch (e) {
      this.hooks.alerts.error(e);
    }
  }

  // ---- Messages ----

  private render(): void {
    const c = this.currentChat;
    this.title.textContent = c ? c.title : 'Gemma Chat';
    this.log.replaceChildren();
    if (!c) {
      this.log.append(h('p', { class: 'empty', text: 'Start a new chat: type a message, drop an image or audio file, or press Record.' }));
    } else {
      const lastAssistant = [...c.messages].reverse().find((m) => m.role === 'assistant');
      for (const m of c.messages) this.log.append(this.messageView(m, m.id === lastAssistant?.id));
    }
    this.hooks.onShown();
    this.scrollToEnd();
  }

  private messageView(m: StoredMessage, isLastReply: boolean): HTMLElement {
    const el = h('article', { class: `message ${m.role}`, 'data-id': String(m.id), 'data-status': m.status, 'aria-label': m.role === 'user' ? 'Your message' : 'Reply' });
    el.append(h('div', { class: 'who', text: m.role === 'user' ? 'You' : 'Gemma' }));
    if (m.attachments.length > 0) {
      const media = h('div', { class: 'media' });
      for (const a of m.attachments) media.append(mediaView(a, (e) => this.hooks.alerts.error(e)));
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

  private scrollToEnd(): void {
    this.log.scrollTop = this.log.scrollHeight;
  }

  private setGenerating(on: boolean): void {
    this.hooks.onGenerating(on);
    for (const b of this.log.querySelectorAll<HTMLButtonElement>('[aria-label="Regenerate"], [aria-label="Edit message"]')) b.disabled = on;
  }

  private onEvent(conversationId: number, e: StreamEvent): void {
    const s = this.streaming;
    if (!s || s.conversationId !== conversationId) return;
    if (e.event === 'waiting') {
      s.waiting = true;
      this.showWaiting();
      return;
    }
    if (e.event === 'token') {
      s.waiting = false;
      this.showWaiting();
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
    if (this.currentChat?.id === conversationId) void this.open(conversationId);
    if (e.event === 'done') this.hooks.onReplyDone(e.stats);
    if (e.event === 'error') this.hooks.alerts.error(e.error);
  }

  /** Says under the empty reply that it waits for the Local API server, until it starts. */
  private showWaiting(): void {
    const s = this.streaming;
    const reply = s?.body?.parentElement;
    if (!s || !reply) return;
    const note = reply.querySelector('.note.waiting');
    if (s.waiting && !note) reply.append(h('div', { class: 'note waiting', role: 'note', text: 'Waiting for the Local API server to finish its request…' }));
    if (!s.waiting) note?.remove();
  }

  /** Run a command that starts a reply, then show the conversation with the empty reply. */
  private async startReply(conversationId: number, start: StartReply): Promise<boolean> {
    if (this.streaming) {
      this.hooks.alerts.error({ kind: 'busy', message: 'A reply is already being generated. Stop it or wait for it to finish.' });
      return false;
    }
    const s = { conversationId, id: -1, text: '', body: null as HTMLElement | null, waiting: false };
    this.streaming = s;
    this.setGenerating(true);
    try {
      const started = await start((e) => this.onEvent(conversationId, e));
      s.id = started.replyId;
    } catch (e) {
      this.streaming = null;
      this.setGenerating(false);
      this.hooks.alerts.error(e);
      return false;
    }
    if (this.streaming !== s) return true; // already finished
    this.currentChat = await api.getConversation(conversationId);
    this.render();
    s.body = this.log.querySelector<HTMLElement>(`[data-id="${s.id}"] .content`);
    if (s.body && s.text) renderInto(s.body, s.text);
    this.showWaiting();
    this.setGenerating(true);
    await this.refreshList();
    return true;
  }

  /** Sends a message in the open chat (a new one if none is open); false if it was not sent. */
  async send(text: string, attachments: Attachment[]): Promise<boolean> {
    if (!this.currentChat) {
      try {
        const c = await api.createConversation();
        this.currentChat = await api.getConversation(c.id);
      } catch (e) {
        this.hooks.alerts.error(e);
        return false;
      }
    }
    const id = this.currentChat.id;
    return this.startReply(id, (onEvent) => api.sendMessage(id, text, attachments, onEvent));
  }

  async stop(): Promise<void> {
    try {
      await api.stopGeneration();
    } catch (e) {
      this.hooks.alerts.error(e);
    }
  }

  private async regenerate(): Promise<void> {
    if (!this.currentChat) return;
    const id = this.currentChat.id;
    await this.startReply(id, (onEvent) => api.regenerate(id, onEvent));
  }

  private edit(el: HTMLElement, m: StoredMessage): void {
    if (!this.currentChat || this.streaming) return;
    const id = this.currentChat.id;
    let body = el.querySelector('.content');
    if (!body) {
      body = h('div', { class: 'content' });
      el.querySelector('.actions')!.before(body);
    }
    const field = h('textarea', { 'aria-label': 'Edit message text', rows: '3' });
    field.value = m.text;
    const save = button('Save and resend', 'Save & resend', () => void this.startReply(id, (onEvent) => api.editAndResend(id, m.id, field.value, onEvent)), 'primary');
    const cancel = button('Cancel edit', 'Cancel', () => this.render());
    body.replaceChildren(field, h('div', { class: 'actions' }, save, cancel));
    field.focus();
  }
}
