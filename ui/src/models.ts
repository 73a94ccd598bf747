// The model: its badge in the top bar, and the Models panel (download, token, local folder,
// load settings).
import { listen } from '@tauri-apps/api/event';
import { api, type DownloadEvent, type DownloadProgress, type LoadSettings, type ModelChoice, type ModelInfo, type ModelsOverview, type ModelStatus, type ReplyStats, type Sampling, type SizeChoice } from './api';
import { type Alerts, button, h } from './dom';
import { formatBytes, formatDownload, formatParams } from './format';

export interface ModelsHooks {
  alerts: Alerts;
  /** The model's status changed (its defaults with it). */
  onStatus(status: ModelStatus): void;
}

export class ModelsView {
  private model: ModelStatus = { state: 'loading', path: '', progress: 0 };
  private overview: ModelsOverview | null = null;
  /** The download this window started: its model and last progress. */
  private download: { id: string; progress: DownloadProgress | null } | null = null;
  /** Decode speed of the last reply from the model as loaded now (tokens/s). */
  private decodeSpeed: number | null = null;

  readonly badge = h('span', { class: 'model-badge', role: 'status' });
  readonly el = h('section', { class: 'settings models', 'aria-label': 'Models', hidden: '' });

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
    button('Cancel download', 'Cancel download', () => void api.cancelDownload().catch((e) => this.hooks.alerts.error(e)), 'danger'),
  );

  constructor(private readonly hooks: ModelsHooks) {}

  /** Follows the model's status; on a first run (only the demo model) opens the panel. */
  async start(): Promise<void> {
    // The model thread announces every status change. An event can overtake a command's
    // response, so the status asked for here is shown only if no newer event came first.
    let heard = false;
    await listen<ModelStatus>('model-status', (e) => {
      heard = true;
      this.setModel(e.payload);
    }).catch(() => undefined);
    const status = await api.modelStatus();
    if (!heard) this.setModel(status);
    await this.refresh();
    if (this.overview && this.overview.choices.every((c) => !c.localPath) && !(this.model.state === 'ready' && !this.model.model.demo)) {
      this.el.hidden = false;
    }
  }

  /** The sampling a chat without its own uses. */
  defaults(): Sampling {
    return this.model.state === 'ready'
      ? this.model.model.defaults
      : { temperature: 1, topK: 64, topP: 0.95, maxNewTokens: 512, seed: 0 };
  }

  toggle(): void {
    this.el.hidden = !this.el.hidden;
    if (!this.el.hidden) void this.refresh();
  }

  private setModel(status: ModelStatus): void {
    this.model = status;
    this.badge.className = 'model-badge';
    if (status.state === 'loading') {
      this.badge.textContent = `Loading model… ${Math.floor(status.progress * 100)}%`;
      this.badge.classList.add('loading');
    } else if (status.state === 'ready') {
      const name = status.model.demo ? 'Demo model — replies are noise' : status.model.name;
      this.badge.textContent = status.model.size ? `${name} · ${status.model.size}` : name;
      this.decodeSpeed = null;
      this.badge.title = `${status.model.path}\n${status.model.compute}`;
      if (status.model.demo) this.badge.classList.add('demo');
    } else {
      this.badge.textContent = 'No model loaded';
      this.badge.classList.add('failed');
      this.hooks.alerts.error(status.error);
    }
    this.hooks.onStatus(status);
    if (!this.el.hidden && status.state !== 'loading') void this.refresh();
  }

  /** A reply's speed, from which the other sizes' speeds are estimated. */
  noteReplySpeed(stats: ReplyStats): void {
    if (!(stats.generatedTokens > 1 && stats.tokensPerSecond > 0)) return;
    this.decodeSpeed = stats.tokensPerSecond;
    if (!this.el.hidden && this.model.state === 'ready' && this.model.model.sizes.length > 0) this.render();
  }

  /** Remember `choice` for the loaded model and reload it at that size. */
  private async loadSize(model: ModelInfo, choice: SizeChoice): Promise<void> {
    const o = this.overview;
    if (!o) return;
    const sizes = { ...o.loadSettings.sizes };
    if (choice.id) sizes[model.path] = choice.id;
    else delete sizes[model.path];
    const settings: LoadSettings = { ...o.loadSettings, sizes };
    try {
      await api.setLoadSettings(settings);
      o.loadSettings = settings;
      await this.openModel(model.path);
    } catch (e) {
      this.hooks.alerts.error(e);
    }
  }

  /** The size slider of a MatFormer model: one stop per slice, the whole model last. */
  private sizePicker(model: ModelInfo, weights: LoadSettings['weights']): HTMLElement[] {
    const sizes = model.sizes;
    if (sizes.length === 0) return [];
    const loaded = Math.max(0, sizes.findIndex((c) => c.id === model.size));
    const slider = h('input', { type: 'range', min: '0', max: String(sizes.length - 1), step: '1', 'aria-label': 'Model size' });
    slider.value = String(loaded);
    const detail = h('p', { class: 'hint size-detail', role: 'status' });
    const bytes = (c: SizeChoice) => c.weightBytes.find((b) => b.weights === weights)?.bytes ?? 0;
    const describe = () => {
      const c = sizes[Number(slider.value)];
      const memory = c.weightBytes.map((b) => `${b.weights} ${formatBytes(b.bytes)}`).join(' · ');
      // Decoding reads every weight once per token, so its speed follows the bytes read.
      const ratio = bytes(sizes[loaded]) / Math.max(1, bytes(c));
      const speed = this.decodeSpeed == null
        ? `decodes about ${ratio.toFixed(2)}× as fast as the loaded size`
        : `decodes at about ${(this.decodeSpeed * ratio).toFixed(1)} tokens/s`;
      const name = c.id ?? 'Whole model';
      detail.textContent = `${name}${c === sizes[loaded] ? ' (loaded)' : ''}: ${c.layers} layers, ${formatParams(c.effectiveParams)} effective parameters; weights ${memory}; in ${weights} it ${speed}.`;
    };
    slider.addEventListener('input', describe);
    describe();
    return [
      h('label', { class: 'size-picker' }, h('span', { text: 'Model size (MatFormer: smaller sizes nested in this model)' }), slider),
      detail,
      h('div', { class: 'actions' }, button('Load the chosen model size', 'Load this size', () => void this.loadSize(model, sizes[Number(slider.value)]))),
    ];
  }

  private async refresh(): Promise<void> {
    try {
      this.overview = await api.modelsOverview();
    } catch (e) {
      this.hooks.alerts.error(e);
      return;
    }
    this.render();
  }

  /** The load's progress and end come as "model-status" events, maybe before this returns. */
  private async openModel(path: string): Promise<void> {
    try {
      await api.openModel(path);
    } catch (e) {
      this.hooks.alerts.error(e);
    }
  }

  private async pickModelFolder(): Promise<void> {
    try {
      const path = await api.pickModelFolder();
      if (path !== null) await this.openModel(path);
    } catch (e) {
      this.hooks.alerts.error(e);
    }
  }

  private async startDownload(choice: ModelChoice): Promise<void> {
    this.download = { id: choice.id, progress: null };
    this.render();
    const onEvent = (e: DownloadEvent) => {
      if (e.event === 'progress') {
        if (this.download) this.download.progress = e.progress;
        this.renderDownload();
        return;
      }
      this.download = null;
      if (e.event === 'done') void this.openModel(e.path);
      if (e.event === 'error') this.hooks.alerts.error(e.error);
      void this.refresh();
    };
    try {
      await api.downloadModel(choice.id, onEvent);
    } catch (e) {
      this.download = null;
      this.hooks.alerts.error(e);
      void this.refresh();
    }
  }

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

  private render(): void {
    const o = this.overview;
    if (!o) return;
    const { alerts } = this.hooks;
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
        this.render();
      } catch (e) {
        alerts.error(e);
      }
    };
    const forgetToken = async () => {
      try {
        const state = await api.forgetToken();
        if (this.overview) this.overview.token = state;
        this.render();
      } catch (e) {
        alerts.error(e);
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
      const settings: LoadSettings = { ...o.loadSettings, weights: weights.value as LoadSettings['weights'], threads: threads.value.trim() === '' ? null : Number(threads.value) };
      try {
        await api.setLoadSettings(settings);
        if (this.overview) this.overview.loadSettings = settings;
        if (reload && this.model.state === 'ready') await this.openModel(this.model.model.path);
      } catch (e) {
        alerts.error(e);
      }
    };

    this.renderDownload();
    this.el.replaceChildren(
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
      ...(this.model.state === 'ready'
        ? [h('p', { class: 'hint model-details', text: `Loaded: ${this.model.model.name}${this.model.model.size ? ` at size ${this.model.model.size}` : ''} — ${this.model.model.contextLength.toLocaleString()} tokens of context, running on ${this.model.model.compute}.` }),
          ...this.sizePicker(this.model.model, o.loadSettings.weights)]
        : []),
      h('div', { class: 'grid' }, h('label', {}, h('span', { text: 'Weight format' }), weights), h('label', {}, h('span', { text: 'Threads' }), threads)),
      h('div', { class: 'actions' },
        button('Save load settings', 'Save', () => void saveLoad(false), 'primary'),
        button('Reload model with these settings', 'Save and reload', () => void saveLoad(true)),
        button('Close models', 'Close', () => (this.el.hidden = true))),
    );
  }
}
