// Typed wrappers over the backend commands (src-tauri/src/commands.rs).
import { Channel, invoke } from '@tauri-apps/api/core';
import { open } from '@tauri-apps/plugin-dialog';

export interface Sampling {
  temperature: number;
  topK: number | null;
  topP: number | null;
  maxNewTokens: number;
  seed: number;
}

export interface ModelInfo {
  name: string;
  path: string;
  demo: boolean;
  defaults: Sampling;
  contextLength: number;
  /** Where the model computes, e.g. "CPU, avx2 kernels". */
  compute: string;
  /** The MatFormer slice loaded (its id); null for the whole model. */
  size: string | null;
  /** The sizes the model can be loaded at, smallest first, the whole model last; empty when none. */
  sizes: SizeChoice[];
}

/** One size a MatFormer model (E4B) can be loaded at. */
export interface SizeChoice {
  /** The slice's id, e.g. "E2.98B-layer"; null for the whole model. */
  id: string | null;
  layers: number;
  effectiveParams: number;
  /** Weight bytes each decoded token reads (and that stay in memory), per weight format. */
  weightBytes: { weights: WeightFormat; bytes: number }[];
}

export type ModelStatus =
  | { state: 'loading'; path: string; progress: number }
  | { state: 'ready'; model: ModelInfo }
  | { state: 'failed'; error: AppError };

export interface AppError {
  kind: string;
  message: string;
}

export interface Attachment {
  hash: string;
  kind: 'image' | 'audio';
  mime: string;
  name: string;
}

export interface ReplyStats {
  promptTokens: number;
  generatedTokens: number;
  stopReason: 'eos' | 'maxTokens' | 'cancelled';
  ttftMs: number;
  tokensPerSecond: number;
}

export type Status = 'streaming' | 'done' | 'stopped' | 'error' | 'interrupted';

export interface StoredMessage {
  id: number;
  role: 'user' | 'assistant';
  text: string;
  attachments: Attachment[];
  status: Status;
  stats: ReplyStats | null;
  error: string | null;
  createdAt: number;
}

export interface ConversationSummary {
  id: number;
  title: string;
  updatedAt: number;
}

export interface Conversation extends ConversationSummary {
  systemPrompt: string;
  sampling: Sampling | null;
  createdAt: number;
  messages: StoredMessage[];
}

export type StreamEvent =
  /** The reply waits for the Local API server's requests ahead of it. */
  | { event: 'waiting' }
  | { event: 'token'; text: string }
  | { event: 'done'; stats: ReplyStats }
  | { event: 'error'; error: AppError };

export interface ReplyStarted {
  userMessageId: number;
  replyId: number;
}

export interface ModelChoice {
  id: string;
  label: string;
  downloadBytes: number;
  /** Peak memory per weight format, measured or estimated. */
  ram: { weights: string; bytes: number; measured: boolean }[];
  localPath: string | null;
  partialBytes: number;
}

export interface TokenState {
  saved: boolean;
  keychain: boolean;
  message: string | null;
}

export type WeightFormat = 'f32' | 'bf16' | 'q8_0' | 'q4k';

export interface LoadSettings {
  weights: WeightFormat;
  threads: number | null;
  /** The slice chosen per model path; a model not listed loads whole. */
  sizes: Record<string, string>;
}

export interface ModelsOverview {
  choices: ModelChoice[];
  cacheDir: string;
  freeBytes: number | null;
  token: TokenState;
  downloading: string | null;
  loadSettings: LoadSettings;
}

export interface DownloadProgress {
  file: string;
  doneBytes: number;
  totalBytes: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
}

export type DownloadEvent =
  | { event: 'progress'; progress: DownloadProgress }
  | { event: 'done'; path: string }
  | { event: 'cancelled' }
  | { event: 'error'; error: AppError };

/** The Local API server's switch and port, as saved. */
export interface ApiServerSettings {
  enabled: boolean;
  port: number;
}

export interface ApiServerStatus {
  settings: ApiServerSettings;
  /** While serving: the API's base URL, e.g. `http://127.0.0.1:8080/v1`. */
  url: string | null;
  /** The model name clients send. */
  model: string;
  /** While serving: a `curl` command that asks the model one question. */
  curl: string | null;
  /** Why it is not serving though switched on (say, the port is taken). */
  error: AppError | null;
}

/** Errors from the backend arrive as `{kind, message}`; anything else is wrapped. */
export function asAppError(e: unknown): AppError {
  if (e && typeof e === 'object' && 'kind' in e && 'message' in e) {
    return e as AppError;
  }
  return { kind: 'internal', message: String(e) };
}

export function attachmentFileName(a: Attachment): string {
  const ext: Record<string, string> = {
    'image/png': 'png',
    'image/jpeg': 'jpg',
    'image/gif': 'gif',
    'image/webp': 'webp',
    'image/bmp': 'bmp',
    'audio/wav': 'wav',
    'audio/flac': 'flac',
    'audio/ogg': 'ogg',
    'audio/mp4': 'm4a',
    'audio/mpeg': 'mp3',
  };
  return `${a.hash}.${ext[a.mime] ?? 'bin'}`;
}

function streamChannel(onEvent: (e: StreamEvent) => void): Channel<StreamEvent> {
  const channel = new Channel<StreamEvent>();
  channel.onmessage = onEvent;
  return channel;
}

export const api = {
  modelStatus: () => invoke<ModelStatus>('model_status'),
  openModel: (path: string) => invoke<void>('open_model', { path }),
  /** The OS's folder picker: the chosen folder, or null when cancelled. */
  pickModelFolder: () => open({ directory: true, title: 'Open a Gemma 3n model folder' }),
  modelsOverview: () => invoke<ModelsOverview>('models_overview'),
  saveToken: (token: string) => invoke<TokenState>('save_token', { token }),
  forgetToken: () => invoke<TokenState>('forget_token'),
  downloadModel: (repoId: string, onEvent: (e: DownloadEvent) => void) => {
    const channel = new Channel<DownloadEvent>();
    channel.onmessage = onEvent;
    return invoke<void>('download_model', { repoId, onEvent: channel });
  },
  cancelDownload: () => invoke<void>('cancel_download'),
  setLoadSettings: (settings: LoadSettings) => invoke<void>('set_load_settings', { settings }),
  listConversations: (query = '') => invoke<ConversationSummary[]>('list_conversations', { query }),
  createConversation: () => invoke<ConversationSummary>('create_conversation', {}),
  renameConversation: (id: number, title: string) => invoke<void>('rename_conversation', { id, title }),
  deleteConversation: (id: number) => invoke<void>('delete_conversation', { id }),
  getConversation: (id: number) => invoke<Conversation>('get_conversation', { id }),
  setSystemPrompt: (id: number, prompt: string) => invoke<void>('set_system_prompt', { id, prompt }),
  setSampling: (id: number, sampling: Sampling | null) => invoke<void>('set_sampling', { id, sampling }),
  saveAttachment: async (file: Blob, name: string) =>
    invoke<Attachment>('save_attachment', new Uint8Array(await file.arrayBuffer()), {
      headers: { 'x-file-name': encodeURIComponent(name) },
    }),
  readAttachment: (a: Attachment) =>
    invoke<ArrayBuffer>('read_attachment', { fileName: attachmentFileName(a) }),
  sendMessage: (conversationId: number, text: string, attachments: Attachment[], onEvent: (e: StreamEvent) => void) =>
    invoke<ReplyStarted>('send_message', { conversationId, text, attachments, onEvent: streamChannel(onEvent) }),
  regenerate: (conversationId: number, onEvent: (e: StreamEvent) => void) =>
    invoke<ReplyStarted>('regenerate', { conversationId, onEvent: streamChannel(onEvent) }),
  editAndResend: (conversationId: number, messageId: number, text: string, onEvent: (e: StreamEvent) => void) =>
    invoke<ReplyStarted>('edit_and_resend', { conversationId, messageId, text, onEvent: streamChannel(onEvent) }),
  stopGeneration: () => invoke<void>('stop_generation'),
  exportConversation: (conversationId: number, format: 'markdown' | 'json') =>
    invoke<{ path: string; content: string }>('export_conversation', { conversationId, format }),
  startRecording: (onLevel: (level: number) => void) => {
    const channel = new Channel<number>();
    channel.onmessage = onLevel;
    return invoke<void>('start_recording', { onLevel: channel });
  },
  stopRecording: () => invoke<Attachment>('stop_recording'),
  cancelRecording: () => invoke<void>('cancel_recording'),
  apiServerStatus: () => invoke<ApiServerStatus>('api_server_status'),
  setApiServer: (settings: ApiServerSettings) => invoke<ApiServerStatus>('set_api_server', { settings }),
};
