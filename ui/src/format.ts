import type { DownloadProgress, ReplyStats, Status } from './api';

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

/** A parameter count as the slice table writes it: 3.98 B, 155 K. */
export function formatParams(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} M`;
  return `${Math.round(n / 1e3)} K`;
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

/** `10.9 GB`, `340 MB`, `12 KB` (decimal units, as disk sizes are sold). */
export function formatBytes(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${Math.round(bytes / 1e6)} MB`;
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} KB`;
  return `${bytes} B`;
}

/** `45 s`, `12 min`, `2 h 5 min`. */
export function formatEta(seconds: number): string {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  const min = Math.round(seconds / 60);
  if (min < 60) return `${min} min`;
  return `${Math.floor(min / 60)} h ${min % 60} min`;
}

/** The line under the download bar: amount, speed and time left. */
export function formatDownload(p: DownloadProgress): string {
  const parts = [`${formatBytes(p.doneBytes)} of ${formatBytes(p.totalBytes)}`];
  if (p.bytesPerSecond > 0) parts.push(`${formatBytes(p.bytesPerSecond)}/s`);
  if (p.etaSeconds != null) parts.push(`${formatEta(p.etaSeconds)} left`);
  return parts.join(' · ');
}
