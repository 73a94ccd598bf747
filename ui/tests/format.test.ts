import { describe, expect, it } from 'vitest';
import { asAppError, attachmentFileName } from '../src/api';
import { formatBytes, formatDownload, formatDuration, formatEta, formatStats, keyAction, kindOfFile, statusNote } from '../src/format';

const key = (key: string, mods: Partial<KeyboardEvent> = {}) => ({
  key, shiftKey: false, ctrlKey: false, metaKey: false, isComposing: false, ...mods,
});

describe('keyAction', () => {
  it('sends on Enter in the message box only', () => {
    expect(keyAction(key('Enter'), true)).toBe('send');
    expect(keyAction(key('Enter'), false)).toBeNull();
  });
  it('keeps Shift+Enter for a new line and ignores IME composition', () => {
    expect(keyAction(key('Enter', { shiftKey: true }), true)).toBeNull();
    expect(keyAction(key('Enter', { isComposing: true }), true)).toBeNull();
  });
  it('stops on Escape and starts a chat on Ctrl+N or Cmd+N', () => {
    expect(keyAction(key('Escape'), true)).toBe('stop');
    expect(keyAction(key('n', { ctrlKey: true }), false)).toBe('newChat');
    expect(keyAction(key('N', { metaKey: true }), true)).toBe('newChat');
    expect(keyAction(key('n'), true)).toBeNull();
  });
});

describe('formatting', () => {
  it('shows speed, time to first token, length and why a reply stopped', () => {
    const stats = { promptTokens: 9, generatedTokens: 20, stopReason: 'cancelled' as const, ttftMs: 41.6, tokensPerSecond: 12.345 };
    expect(formatStats(stats)).toBe('12.3 tokens/s · TTFT 42 ms · 20 tokens · stopped');
    expect(formatStats({ ...stats, stopReason: 'eos' })).toBe('12.3 tokens/s · TTFT 42 ms · 20 tokens');
    expect(formatStats({ ...stats, stopReason: 'maxTokens' })).toMatch(/hit max tokens$/);
  });
  it('explains interrupted and stopped replies', () => {
    expect(statusNote('interrupted')).toMatch(/app closed/);
    expect(statusNote('done')).toBeNull();
  });
  it('formats the recording timer', () => {
    expect(formatDuration(0)).toBe('0:00');
    expect(formatDuration(65_400)).toBe('1:05');
  });
});

describe('files', () => {
  it('recognises images and audio by type, then by name', () => {
    expect(kindOfFile({ type: 'image/png', name: 'x' })).toBe('image');
    expect(kindOfFile({ type: '', name: 'a.WAV' })).toBe('audio');
    expect(kindOfFile({ type: 'text/plain', name: 'notes.txt' })).toBeNull();
  });
  it('names stored attachments by hash and extension', () => {
    expect(attachmentFileName({ hash: 'ab', kind: 'audio', mime: 'audio/mpeg', name: 'x' })).toBe('ab.mp3');
  });
  it('wraps unknown errors', () => {
    expect(asAppError({ kind: 'busy', message: 'm' })).toEqual({ kind: 'busy', message: 'm' });
    expect(asAppError(new Error('boom'))).toEqual({ kind: 'internal', message: 'Error: boom' });
  });
});

describe('download progress', () => {
  it('formats sizes in decimal units', () => {
    expect(formatBytes(10_900_000_000)).toBe('10.9 GB');
    expect(formatBytes(340_000_000)).toBe('340 MB');
    expect(formatBytes(12_345)).toBe('12 KB');
    expect(formatBytes(5)).toBe('5 B');
  });
  it('formats the time left', () => {
    expect(formatEta(0.2)).toBe('1 s');
    expect(formatEta(45)).toBe('45 s');
    expect(formatEta(720)).toBe('12 min');
    expect(formatEta(7500)).toBe('2 h 5 min');
  });
  it('says amount, speed and time left, leaving out what is unknown', () => {
    expect(formatDownload({ file: 'a', doneBytes: 1_200_000_000, totalBytes: 10_900_000_000, bytesPerSecond: 12_000_000, etaSeconds: 808 }))
      .toBe('1.2 GB of 10.9 GB · 12 MB/s · 13 min left');
    expect(formatDownload({ file: 'a', doneBytes: 0, totalBytes: 10_900_000_000, bytesPerSecond: 0, etaSeconds: null }))
      .toBe('0 B of 10.9 GB');
  });
});
