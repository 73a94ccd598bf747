import type { ReplyStats, Status } from './api';

/** The line under a reply: speed, time to first token, length, and why it stopped. */
export function formatStats(stats: ReplyStats): string {
  const parts = [
    `${stats.tokensPerSecond.toFixed(1)} tokens/s`,
    `TTFT ${Math.round(stats.ttftMs)} ms`,
    `${stats.generatedTokens} tokens`,
  ];
  if (stats.stopReason === 'cancelled') parts.push('stopped');
  if (stats.stopReason === 'maxTokens') parts.push('hit max tokens');
  return parts.join(' · ');
}

export function statusNote(status: Status): string | null {
  switch (status) {
    case 'interrupted':
      return 'Interrupted: the app closed while this reply was being written.';
    case 'stopped':
      return 'Stopped.';
    default:
      return null;
  }
}

export function formatDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

export type KeyAction = 'send' | 'stop' | 'newChat' | null;

/** Keyboard shortcuts of the message box and the window. */
export function keyAction(e: Pick<KeyboardEvent, 'key' | 'shiftKey' | 'ctrlKey' | 'metaKey' | 'isComposing'>, inMessageBox: boolean): KeyAction {
  if (e.isComposing) return null;
  if (e.key === 'Escape') return 'stop';
  if ((e.ctrlKey || e.metaKey) && (e.key === 'n' || e.key === 'N')) return 'newChat';
  if (inMessageBox && e.key === 'Enter' && !e.shiftKey && !e.ctrlKey && !e.metaKey) return 'send';
  return null;
}

export function kindOfFile(file: { type: string; name: string }): 'image' | 'audio' | null {
  if (file.type.startsWith('image/')) return 'image';
  if (file.type.startsWith('audio/')) return 'audio';
  if (/\.(png|jpe?g|gif|webp|bmp)$/i.test(file.name)) return 'image';
  if (/\.(wav|mp3|flac|ogg|m4a)$/i.test(file.name)) return 'audio';
  return null;
}
