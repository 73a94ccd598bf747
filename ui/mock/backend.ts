// An in-memory backend behind mockIPC, so the real UI runs in a plain browser for tests.
// Tests steer it through `window.__mock`.
import { emit } from '@tauri-apps/api/event';
import { mockIPC } from '@tauri-apps/api/mocks';
import type { ApiServerSettings, ApiServerStatus, Attachment, Conversation, DownloadEvent, ModelStatus, ModelsOverview, ReplyStats, StoredMessage, StreamEvent } from '../src/api';

interface MockControl {
  /** Pieces of the next replies. */
  reply: string[];
  delayMs: number;
  /** Fail the next command of this name with this error. */
  failNext: Record<string, { kind: string; message: string }>;
  calls: { cmd: string; args: unknown }[];
  conversations: Conversation[];
  files: Map<string, { bytes: Uint8Array; mime: string }>;
  models: ModelsOverview;
  /** Break the next download after its first progress event. */
  downloadFails: boolean;
  /** Where the next model load stops, still loading; null: it finishes. */
  loadStopsAt: number | null;
  /** What the native folder picker answers: the chosen folder, or null for Cancel. */
  folderPick: string | null;
  /** The Local API server's saved settings. */
  apiServer: ApiServerSettings;
  /** How long the next reply waits for a Local API server request first (0: none). */
  apiBusyMs: number;
  /** A port another program holds: switching the server on there fails. */
  takenPort: number | null;
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
  models: {
    choices: [
      { id: 'google/gemma-3n-E2B-it', label: 'Gemma 3n E2B (instruction-tuned)', downloadBytes: 10_900_000_000,
        ram: [{ weights: 'q4k', bytes: 1.68e9, measured: true }, { weights: 'f32', bytes: 9.4e9, measured: false }], localPath: null, partialBytes: 0 },
      { id: 'google/gemma-3n-E4B-it', label: 'Gemma 3n E4B (instruction-tuned)', downloadBytes: 15_700_000_000,
        ram: [{ weights: 'q4k', bytes: 2.7e9, measured: false }, { weights: 'f32', bytes: 15.7e9, measured: false }], localPath: null, partialBytes: 0 },
    ],
    cacheDir: '/home/me/.cache/huggingface/hub',
    freeBytes: 12_000_000_000,
    token: { saved: false, keychain: false, message: 'No OS keychain is available (no D-Bus session), so the token is kept for this session only.' },
    downloading: null,
    loadSettings: { weights: 'f32', threads: null, sizes: {} },
  },
  downloadFails: false,
  loadStopsAt: null,
  folderPick: null,
  apiServer: { enabled: false, port: 8080 },
  takenPort: null,
  apiBusyMs: 0,
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
  const waitMs = control.apiBusyMs;
  control.apiBusyMs = 0;
  if (waitMs > 0) setTimeout(() => send({ event: 'waiting' }), 0);
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
  }, waitMs);
  return Promise.resolve();
}

let modelStatus: ModelStatus = { state: 'ready', model: { name: 'Demo model — replies are noise', path: '/demo', demo: true, defaults, contextLength: 4096, compute: 'CPU, avx2 kernels', size: null, sizes: [] } };

/** As on the model thread: every status change is announced. */
async function setModelStatus(status: ModelStatus): Promise<void> {
  modelStatus = status;
  await emit('model-status', status);
}

/** A load as the backend's, named like a folder of hf-hub's cache. */
async function loadModel(path: string): Promise<void> {
  await setModelStatus({ state: 'loading', path, progress: 0 });
  if (control.loadStopsAt != null) return setModelStatus({ state: 'loading', path, progress: control.loadStopsAt });
  const repo = /models--(.+?)\/snapshots\//.exec(path)?.[1].replace('--', '/');
  await setModelStatus({ state: 'ready', model: { name: repo ?? path.split('/').pop()!, path, demo: false, defaults, contextLength: 4096, compute: 'CPU, avx2 kernels', size: null, sizes: [] } });
}

/** As the backend reports it: serving when on, unless the port is taken. */
function apiServerStatus(): ApiServerStatus {
  const { enabled, port } = control.apiServer;
  const taken = enabled && port === control.takenPort;
  return {
    settings: { ...control.apiServer },
    url: enabled && !taken ? `http://127.0.0.1:${port}/v1` : null,
    model: 'gemma-3n-demo',
    curl: enabled && !taken ? `curl http://127.0.0.1:${port}/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "gemma-3n-demo", "messages": [{"role": "user", "content": "Hello!"}]}'` : null,
    error: taken ? { kind: 'apiServer', message: `port ${port} on 127.0.0.1 is already in use by another program; choose another port` } : null,
  };
}

let cancelDownload = false;

/** A fake download: progress every 40 ms, 1 GB at a time. */
function fakeDownload(id: string, channel: { id: number }): void {
  const choice = control.models.choices.find((c) => c.id === id)!;
  control.models.downloading = id;
  cancelDownload = false;
  let index = 0;
  const send = (message: DownloadEvent) => window.__TAURI_INTERNALS__.runCallback(channel.id, { index: index++, message });
  const finish = (message: DownloadEvent) => {
    control.models.downloading = null;
    send(message);
  };
  if (control.models.freeBytes != null && control.models.freeBytes < choice.downloadBytes - choice.partialBytes) {
    setTimeout(() => finish({ event: 'error', error: { kind: 'download', message: `not enough disk space: the download needs ${choice.downloadBytes / 1e9} GB more in ${control.models.cacheDir}, but only 12.0 GB is free` } }), 0);
    return;
  }
  const tick = () => {
    if (cancelDownload) return finish({ event: 'cancelled' });
    choice.partialBytes = Math.min(choice.partialBytes + 1e9, choice.downloadBytes);
    send({ event: 'progress', progress: { file: 'model-00001-of-00004.safetensors', doneBytes: choice.partialBytes, totalBytes: choice.downloadBytes, bytesPerSecond: 25e6, etaSeconds: (choice.downloadBytes - choice.partialBytes) / 25e6 } });
    if (control.downloadFails) {
      control.downloadFails = false;
      return finish({ event: 'error', error: { kind: 'download', message: 'model-00001-of-00004.safetensors: the connection was lost after 1.0 GB of 3.1 GB (connection reset); the partial file is kept, so downloading again resumes from there' } });
    }
    if (choice.partialBytes >= choice.downloadBytes) {
      choice.partialBytes = 0;
      choice.localPath = `/home/me/.cache/huggingface/hub/models--${id.replace('/', '--')}/snapshots/abc`;
      return finish({ event: 'done', path: choice.localPath });
    }
    setTimeout(tick, 40);
  };
  setTimeout(tick, 40);
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
      return modelStatus;
    case 'models_overview':
      return structuredClone(control.models);
    case 'download_model':
      if (control.models.downloading) throw { kind: 'invalidInput', message: `${control.models.downloading} is already downloading; cancel it first` };
      fakeDownload(args.repoId, args.onEvent);
      return null;
    case 'cancel_download':
      cancelDownload = true;
      return null;
    case 'save_token':
      if (!String(args.token).trim()) throw { kind: 'invalidInput', message: 'paste a Hugging Face access token (it starts with hf_)' };
      control.models.token = { ...control.models.token, saved: true };
      return control.models.token;
    case 'forget_token':
      control.models.token = { ...control.models.token, saved: false };
      return control.models.token;
    case 'set_load_settings':
      if (!['f32', 'bf16', 'q8_0', 'q4k'].includes(args.settings.weights)) throw { kind: 'invalidInput', message: 'unknown weight format' };
      control.models.loadSettings = args.settings;
      return null;
    // The dialog plugin's command behind `open()` from @tauri-apps/plugin-dialog.
    case 'plugin:dialog|open':
      return control.folderPick;
    case 'open_model':
      // A small model loads before the command's response reaches the window, as in the app:
      // the status events come first.
      await loadModel(args.path);
      return null;
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
    case 'api_server_status':
      return apiServerStatus();
    case 'set_api_server': {
      const { enabled, port } = args.settings as ApiServerSettings;
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw { kind: 'invalidInput', message: 'the port must be a whole number from 1 to 65535' };
      control.apiServer = { enabled, port };
      return apiServerStatus();
    }
    case 'start_recording':
      throw { kind: 'recording', message: 'recording is not available in this build' };
    default:
      throw { kind: 'internal', message: `mock: unknown command ${cmd}` };
  }
}, { shouldMockEvents: true });

void import('../src/main');
