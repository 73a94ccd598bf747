// The composer: the message box, attachments (picker, paste, drop) and the recorder.
import { api, type Attachment } from './api';
import { type Alerts, button, h } from './dom';
import { formatDuration, keyAction, kindOfFile } from './format';
import { mediaView } from './media';

export interface ComposerHooks {
  alerts: Alerts;
  /** Sends the message; false when it was not sent, so the draft is kept. */
  send(text: string, attachments: Attachment[]): Promise<boolean>;
  stop(): void;
}

export class Composer {
  private pending: Attachment[] = [];
  private recording: { started: number; timer: number } | null = null;

  private tray = h('div', { class: 'tray', 'aria-label': 'Attachments to send' });
  private input = h('textarea', { 'aria-label': 'Message', placeholder: 'Message Gemma — Enter to send, Shift+Enter for a new line', rows: '1' });
  private fileInput = h('input', { type: 'file', accept: 'image/*,audio/*', multiple: '', hidden: '', 'aria-label': 'Choose files to attach' });
  private sendButton = button('Send', 'Send', () => void this.send(), 'primary');
  private stopButton = button('Stop', 'Stop', () => this.hooks.stop(), 'danger');
  private recordButton = button('Record', 'Record', () => void this.toggleRecording(), 'icon');
  private meter = h('span', { class: 'meter', role: 'meter', 'aria-label': 'Input level', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0' }, h('span', { class: 'meter-fill' }));
  private timer = h('span', { class: 'timer', 'aria-label': 'Recording time', text: '0:00' });
  /** Shown over the whole window while files are dragged over it. */
  readonly dropOverlay = h('div', { class: 'drop-overlay', hidden: '', text: 'Drop images or audio to attach' });

  constructor(private readonly hooks: ComposerHooks) {
    this.stopButton.hidden = true;
    this.meter.hidden = true;
    this.timer.hidden = true;
    this.wireEvents();
  }

  element(): HTMLElement {
    const attach = button('Attach', 'Attach', () => this.fileInput.click());
    return h(
      'footer',
      { class: 'composer' },
      this.tray,
      h('div', { class: 'composer-row' }, attach, this.recordButton, this.meter, this.timer, this.input, this.sendButton, this.stopButton),
      this.fileInput,
    );
  }

  focus(): void {
    this.input.focus();
  }

  /** While a reply is generated, Stop takes the place of Send. */
  setGenerating(on: boolean): void {
    this.sendButton.hidden = on;
    this.stopButton.hidden = !on;
  }

  private wireEvents(): void {
    this.input.addEventListener('input', () => this.autosize());
    this.input.addEventListener('keydown', (e) => {
      if (keyAction(e, true) === 'send') {
        e.preventDefault();
        void this.send();
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
  }

  private autosize(): void {
    this.input.style.height = 'auto';
    this.input.style.height = `${Math.min(this.input.scrollHeight, 240)}px`;
  }

  private async send(): Promise<void> {
    const text = this.input.value;
    if (!text.trim() && this.pending.length === 0) return;
    if (await this.hooks.send(text, this.pending)) {
      this.input.value = '';
      this.autosize();
      this.pending = [];
      this.renderTray();
    }
  }

  // ---- Attachments ----

  private async attachFiles(files: File[]): Promise<void> {
    for (const file of files) {
      if (!kindOfFile(file)) {
        this.hooks.alerts.error({ kind: 'attachment', message: `${file.name} is not an image or audio file` });
        continue;
      }
      try {
        this.pending.push(await api.saveAttachment(file, file.name));
      } catch (e) {
        this.hooks.alerts.error(e);
      }
    }
    this.renderTray();
  }

  private renderTray(): void {
    this.tray.replaceChildren(
      ...this.pending.map((a, i) => {
        const item = h('div', { class: 'tray-item', 'data-kind': a.kind }, mediaView(a, (e) => this.hooks.alerts.error(e)));
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

  // ---- Recording ----

  private async toggleRecording(): Promise<void> {
    if (this.recording) {
      clearInterval(this.recording.timer);
      this.recording = null;
      this.showRecording(false);
      try {
        this.pending.push(await api.stopRecording());
        this.renderTray();
      } catch (e) {
        this.hooks.alerts.error(e);
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
      this.hooks.alerts.error(e);
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
}
