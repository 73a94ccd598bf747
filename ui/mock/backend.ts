// An in-memory backend behind mockIPC, so the real UI runs in a plain browser for tests.
// Tests steer it through `window.__mock`.
import { mockIPC } from '@tauri-apps/api/mocks';
import type { Attachment, Conversation, ReplyStats, StoredMessage, StreamEvent } from '../src/api';

interface MockControl {
  /** Pieces of the next replies. */
  reply: string[];
  delayMs: number;
  /** Fail the next command of this name with this error. */
  failNext: Record<string, { kind: string; message: string }>;
  calls: { cmd: string; args: unknown }[];
  conversations: Conversation[];
  files: Map<string, { bytes: Uint8Array; mime: string }>;
}

declare global {
  interface Window {
    __mock: MockControl;
    __TAURI_INTERNALS__: { runCallback: (id: number, data: unknown) => void };
  }
}

const control: MockControl = {
  reply: ['Hello', ' from', ' the', ' mock.'],
  delayMs: 30,
  failNext: {},
  calls: [],
  conversations: [],
  files: new Map(),
};
window.__mock = control;

let nextId = 1;
let cancel = false;
let busy = false;
const defaults = { temperature: 1, topK: 64, topP: 0.95, maxNewTokens: 512, seed: 0 };

function find(id: number): Conversation {
  const c = control.conversations.find((c) => c.id === id);
  if (!c) throw { kind: 'notFound', message: `conversation ${id} does not exist` };
  return c;
}

function sniff(b: Uint8Array): { kind: 'image' | 'audio'; mime: string } | null {
  const s = String.fromCharCode(...b.slice(0, 12));
  if (s.startsWith('\x89PNG')) return { kind: 'image', mime: 'image/png' };
  if (b[0] === 0xff && b[1] === 0xd8) return { kind: 'image', mime: 'image/jpeg' };
  if (s.startsWith('RIFF') && s.slice(8, 12) === 'WAVE') return { kind: 'audio', mime: 'audio/wav' };
  return null;
}

async function stream(c: Conversation, channel: { id: number }): Promise<void> {
  const reply: StoredMessage = { id: nextId++, role: 'assistant', text: '', attachments: [], status: 'streaming', stats: null, error: null, createdAt: Date.now() };
  c.messages.push(reply);
  busy = true;
  cancel = false;
  let index = 0;
  const send = (message: StreamEvent) => window.__TAURI_INTERNALS__.runCallback(channel.id, { index: index++, message });
  const started = performance.now();
  setTimeout(async () => {
    let n = 0;
    for (const piece of control.reply) {
      if (cancel) break;
      reply.text += piece;
      n++;
      send({ event: 'token', text: piece });
      await new Promise((r) => setTimeout(r, control.delayMs));
    }
    const stats: ReplyStats = { promptTokens: 12, generatedTokens: n, stopReason: cancel ? 'cancelled' : 'eos', ttftMs: 42, tokensPerSecond: 25.5 };
    reply.status = cancel ? 'stopped' : 'done';
    reply.stats = stats;
    busy = false;
    send({ event: 'done', stats });
    window.__TAURI_INTERNALS__.runCallback(channel.id, { index, end: true });
    void started;
  }, 0);
  return Promise.resolve();
}

mockIPC(async (cmd, raw) => {
  const args = (raw ?? {}) as Record<string, any>;
  control.calls.push({ cmd, args });
  const failure = control.failNext[cmd];
  if (failure) {
    delete control.failNext[cmd];
    throw failure;
  }
  switch (cmd) {
    case 'model_status':
      return { state: 'ready', model: { name: 'Demo model — replies are noise', path: '/demo', demo: true, defaults } };
    case 'list_conversations': {
      const q = String(args.query ?? '').toLowerCase();
      return control.conversations
        .filter((c) => !q || c.title.toLowerCase().includes(q) || c.messages.some((m) => m.text.toLowerCase().includes(q)))
        .sort((a, b) => b.updatedAt - a.updatedAt || b.id - a.id)
        .map(({ id, title, updatedAt }) => ({ id, title, updatedAt }));
    }
    case 'create_conversation': {
      const c: Conversation = { id: nextId++, title: 'New chat', systemPrompt: '', sampling: null, createdAt: Date.now(), updatedAt: Date.now(), messages: [] };
      control.conversations.push(c);
      return { id: c.id, title: c.title, updatedAt: c.updatedAt };
    }
    case 'rename_conversation':
      find(args.id).title = args.title;
      return null;
    case 'delete_conversation':
      find(args.id);
      control.conversations = control.conversations.filter((c) => c.id !== args.id);
      return null;
    case 'get_conversation':
      return structuredClone(find(args.id));
    case 'set_system_prompt':
      find(args.id).systemPrompt = args.prompt;
      return null;
    case 'set_sampling':
      find(args.id).sampling = args.sampling;
      return null;
    case 'save_attachment': {
      const bytes = new Uint8Array(raw as Uint8Array);
      const kind = sniff(bytes);
      if (!kind) throw { kind: 'attachment', message: 'attachment is not a supported image or audio file' };
      // Not SHA-256 (crypto.subtle needs a secure origin), just a stable 64-hex-digit key.
      let h = 0x811c9dc5;
      for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
      const hash = h.toString(16).padStart(8, '0').repeat(8);
      control.files.set(hash, { bytes, mime: kind.mime });
      return { hash, kind: kind.kind, mime: kind.mime, name: kind.kind === 'image' ? 'image.png' : 'audio.wav' } satisfies Attachment;
    }
    case 'read_attachment': {
      const f = control.files.get(String(args.fileName).split('.')[0]);
      if (!f) throw { kind: 'notFound', message: `no attachment ${args.fileName}` };
      return f.bytes.slice().buffer;
    }
    case 'send_message': {
      if (busy) throw { kind: 'busy', message: 'A reply is already being generated. Stop it or wait for it to finish.' };
      const c = find(args.conversationId);
      if (c.messages.length === 0 && c.title === 'New chat') c.title = String(args.text).split('\n')[0].slice(0, 48) || 'New chat';
      const user: StoredMessage = { id: nextId++, role: 'user', text: args.text, attachments: args.attachments, status: 'done', stats: null, error: null, createdAt: Date.now() };
      c.messages.push(user);
      c.updatedAt = Date.now();
      await stream(c, args.onEvent);
      return { userMessageId: user.id, replyId: c.messages[c.messages.length - 1].id };
    }
    case 'regenerate': {
      const c = find(args.conversationId);
      if (c.messages[c.messages.length - 1]?.role === 'assistant') c.messages.pop();
      await stream(c, args.onEvent);
      return { userMessageId: c.messages[c.messages.length - 2].id, replyId: c.messages[c.messages.length - 1].id };
    }
    case 'edit_and_resend': {
      const c = find(args.conversationId);
      const i = c.messages.findIndex((m) => m.id === args.messageId);
      c.messages[i].text = args.text;
      c.messages.splice(i + 1);
      await stream(c, args.onEvent);
      return { userMessageId: args.messageId, replyId: c.messages[c.messages.length - 1].id };
    }
    case 'stop_generation':
      cancel = true;
      return null;
    case 'export_conversation':
      return { path: `/tmp/export-${args.conversationId}.${args.format === 'json' ? 'json' : 'md'}`, content: '' };
    case 'start_recording':
      throw { kind: 'recording', message: 'recording is not available in this build' };
    default:
      throw { kind: 'internal', message: `mock: unknown command ${cmd}` };
  }
});

void import('../src/main');
