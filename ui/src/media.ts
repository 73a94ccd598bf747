// Attachments as the page shows them: an image thumbnail or an audio player with its name.
import { api, type Attachment } from './api';
import { h } from './dom';

/** One object URL per attachment, however often it is shown. */
const urls = new Map<string, string>();

async function mediaUrl(a: Attachment): Promise<string> {
  let url = urls.get(a.hash);
  if (!url) {
    const bytes = await api.readAttachment(a);
    url = URL.createObjectURL(new Blob([bytes], { type: a.mime }));
    urls.set(a.hash, url);
  }
  return url;
}

/** The element at once; its source once the bytes are read (or `onError` if they cannot be). */
export function mediaView(a: Attachment, onError: (e: unknown) => void): HTMLElement {
  const el =
    a.kind === 'image'
      ? h('img', { class: 'thumb', alt: a.name, title: a.name })
      : h('audio', { controls: '', preload: 'metadata', 'aria-label': `Audio: ${a.name}` });
  void mediaUrl(a).then((url) => {
    (el as HTMLImageElement | HTMLAudioElement).src = url;
  }, onError);
  return a.kind === 'image' ? el : h('figure', { class: 'audio' }, el, h('figcaption', { text: a.name }));
}
