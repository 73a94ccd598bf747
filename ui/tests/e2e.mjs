// End-to-end in the real app window: Xvfb + tauri-driver + WebKitWebDriver, demo model.
// Started by scripts/test-desktop.sh, which provides the display, the driver on
// $WEBDRIVER_PORT, and the app's environment (data folder, test microphone source).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { remote } from 'webdriverio';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const application = resolve(process.env.APP_BIN ?? join(root, 'target/debug/gemma-chat-desktop'));
const artifacts = resolve(process.env.ARTIFACTS_DIR ?? join(root, 'artifacts/desktop'));
const shots = join(artifacts, 'e2e');
const fixtures = join(root, 'tests/fixtures/C');
mkdirSync(shots, { recursive: true });

let app;
let step = 0;

async function launch() {
  app = await remote({
    hostname: '127.0.0.1',
    port: Number(process.env.WEBDRIVER_PORT ?? 4444),
    logLevel: 'warn',
    capabilities: {
      browserName: 'wry',
      'tauri:options': { application },
      'wdio:enforceWebDriverClassic': true,
    },
  });
  await app.setTimeout({ implicit: 0 });
}

async function shot(name) {
  step++;
  await app.saveScreenshot(join(shots, `${String(step).padStart(2, '0')}-${name}.png`));
}

const $ = (sel) => app.$(sel);
const waitText = async (sel, pattern, timeout = 60000) => {
  await app.waitUntil(async () => pattern.test(await app.execute((s) => document.querySelector(s)?.textContent ?? '', sel)), {
    timeout, timeoutMsg: `${sel} never matched ${pattern}`,
  });
};
const lastReply = 'article.message.assistant:last-of-type'; // the log holds only articles
const replyCount = () => app.execute(() => document.querySelectorAll('article.message.assistant').length);

async function waitReplyEnded(count) {
  await app.waitUntil(async () => app.execute((n) => {
    const replies = document.querySelectorAll('article.message.assistant');
    const last = replies[replies.length - 1];
    return replies.length >= n && !!last && last.dataset.status !== 'streaming';
  }, count), { timeout: 120000, timeoutMsg: 'the reply never ended' });
}

async function type(text) {
  const box = await $('textarea[aria-label="Message"]');
  await box.click();
  await box.setValue(text);
}

/** Hand a fixture to the page as a File, through a drop or a paste event. */
async function dropFile(path, name, type, how) {
  const base64 = readFileSync(path).toString('base64');
  await app.execute((b64, name, type, how) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], name, { type }));
    const event = how === 'drop'
      ? new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })
      : new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true });
    window.dispatchEvent(event);
  }, base64, name, type, how);
}

after(async () => {
  await app?.deleteSession().catch(() => {});
});

/** The last lines of the app's log of this run (GEMMA_CHAT_LOG_DIR, set by the script). */
function appLogTail(lines = 60) {
  const dir = process.env.GEMMA_CHAT_LOG_DIR;
  if (!dir || !existsSync(dir)) return '(no log folder: GEMMA_CHAT_LOG_DIR is not set or empty)';
  const files = readdirSync(dir).filter((f) => f.startsWith('gemma-chat')).sort();
  return files.flatMap((f) => readFileSync(join(dir, f), 'utf8').split('\n')).slice(-lines).join('\n');
}

/** A test that, when it fails, prints what the window showed and the app's log, and keeps a screenshot. */
function e2e(name, body) {
  test(name, async () => {
    try {
      await body();
    } catch (e) {
      const seen = await app?.execute(() => ({
        model: document.querySelector('.model-badge')?.textContent,
        alerts: document.querySelector('.alerts')?.textContent,
        download: document.querySelector('.download-text')?.textContent,
      })).catch((err) => `(the window did not answer: ${err.message})`);
      await shot('failed').catch(() => {});
      console.error(`\n"${name}" failed. The window showed: ${JSON.stringify(seen)}\nThe app's log ends with:\n${appLogTail()}\n`);
      throw e;
    }
  });
}

e2e('the app starts on the demo model, clearly labelled', async () => {
  await launch();
  await waitText('.model-badge', /Demo model — replies are noise/);
  for (const name of ['Message']) await $(`textarea[aria-label="${name}"]`).then((e) => e.waitForExist());
  for (const name of ['Send', 'Attach', 'Record', 'New chat']) {
    assert.ok(await (await $(`button[aria-label="${name}"]`)).isExisting(), name);
  }
  await shot('started');
});

e2e('a text message gets a streamed reply with speed and TTFT', async () => {
  await (await $('button[aria-label="New chat"]')).click();
  await type('Hello from the end-to-end test');
  await (await $('button[aria-label="Send"]')).click();
  await waitReplyEnded(1);
  await waitText(`${lastReply} .stats`, /tokens\/s · TTFT \d+ ms/);
  const text = await app.execute((s) => document.querySelector(s).textContent, `${lastReply} .content`);
  assert.ok(text.trim().length > 0, 'the demo model wrote something');
  await waitText('.chat-list', /Hello from the end-to-end test/);
  await shot('text-reply');
});

e2e('an image is attached by drop and shown as a thumbnail', async () => {
  await dropFile(join(fixtures, 'image.png'), 'image.png', 'image/png', 'drop');
  const thumb = await $('.tray img.thumb');
  await thumb.waitForExist({ timeout: 20000 });
  await app.waitUntil(() => app.execute(() => {
    const img = document.querySelector('.tray img.thumb');
    return !!img && img.complete && img.naturalWidth > 0;
  }), { timeout: 20000, timeoutMsg: 'the thumbnail never decoded' });
  await type('What is in this picture?');
  await shot('image-attached');
  const before = await replyCount();
  await (await $('button[aria-label="Send"]')).click();
  await waitReplyEnded(before + 1);
  assert.ok(await app.execute(() => !!document.querySelector('article.message.user:nth-last-of-type(2) img.thumb')));
  // The model saw the image: the reply completes (the demo model's words are noise).
  const outcome = await app.execute(() => {
    const all = document.querySelectorAll('article.message.assistant');
    const m = all[all.length - 1];
    return { status: m?.dataset.status ?? 'missing', error: m?.querySelector('.reply-error')?.textContent ?? '' };
  });
  assert.equal(outcome.status, 'done', JSON.stringify(outcome));
  await shot('image-reply');
});

e2e('an audio file is attached by paste and playable in the message', async () => {
  await dropFile(join(fixtures, 'audio_16k_mono.wav'), 'speech.wav', 'audio/wav', 'paste');
  await (await $('.tray audio')).waitForExist({ timeout: 20000 });
  const before = await replyCount();
  await (await $('button[aria-label="Send"]')).click();
  await waitReplyEnded(before + 1);
  const src = await app.execute(() => document.querySelector('article.message.user:nth-last-of-type(2) audio')?.src ?? '');
  assert.match(src, /^blob:/);
  await shot('audio-reply');
});

e2e('recording from the test audio source attaches a clip', async () => {
  const record = await $('button[aria-label="Record"]');
  await record.click();
  await waitText('.timer', /0:0[1-9]/, 10000);
  assert.equal(await record.getAttribute('aria-pressed'), 'true');
  await app.waitUntil(() => app.execute(() => Number(document.querySelector('.meter').getAttribute('aria-valuenow')) > 0), {
    timeout: 10000, timeoutMsg: 'the level meter never moved',
  });
  await shot('recording');
  await record.click();
  await (await $('.tray audio')).waitForExist({ timeout: 20000 });
  await (await $('button[aria-label="Remove Recording.wav"]')).click();
});

let firstChat;

e2e('Stop ends a reply midway and keeps its text', async () => {
  firstChat = await app.execute(() => ({
    title: document.querySelector('.chat-title').textContent,
    messages: document.querySelectorAll('article.message').length,
  }));
  // A fresh chat, sampled (greedy replies of the demo model end at once; sampled ones run on).
  await (await $('button[aria-label="New chat"]')).click();
  await app.waitUntil(() => app.execute(() => document.querySelector('.chat-title').textContent === 'New chat'));
  await (await $('button[aria-label="Chat settings"]')).click();
  await (await $('input[aria-label="Temperature"]')).setValue('1');
  await (await $('input[aria-label="Max tokens"]')).setValue('32768');
  await (await $('button[aria-label="Save settings"]')).click();
  await type('Tell me a very long story');
  const before = await replyCount();
  await (await $('button[aria-label="Send"]')).click();
  await app.waitUntil(() => app.execute((s, n) => {
    const all = document.querySelectorAll('article.message.assistant');
    return all.length > n && (all[all.length - 1].querySelector('.content')?.textContent.length ?? 0) > 20;
  }, lastReply, before), { timeout: 60000, timeoutMsg: 'the reply never started' });
  await shot('streaming');
  await (await $('button[aria-label="Stop"]')).click();
  await waitReplyEnded(before + 1);
  await waitText(`${lastReply} .stats`, /stopped/);
  await shot('stopped');
});

e2e('after a restart the conversations are still there', async () => {
  const stopped = await app.execute(() => document.querySelector('.chat-title').textContent);
  await app.deleteSession();
  app = null;
  await launch();
  await waitText('.model-badge', /Demo model/);
  for (const title of [firstChat.title, stopped]) {
    await waitText('.chat-list', new RegExp(title.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  }
  await app.execute((t) => [...document.querySelectorAll('.chat-link')].find((b) => b.textContent === t).click(), firstChat.title);
  await app.waitUntil(() => app.execute((n) => document.querySelectorAll('article.message').length === n, firstChat.messages), {
    timeout: 20000, timeoutMsg: 'the messages did not come back',
  });
  await app.waitUntil(() => app.execute(() => {
    const img = document.querySelector('article.message.user img.thumb');
    return !!img && img.complete && img.naturalWidth > 0;
  }), { timeout: 20000, timeoutMsg: 'the image did not come back' });
  await shot('after-restart');
});

e2e('deleting a chat asks in the window; Cancel keeps it', async () => {
  const ids = () => app.execute(() => [...document.querySelectorAll('.chat-item')].map((li) => li.dataset.id));
  const before = await ids();
  await (await $('button[aria-label="New chat"]')).click();
  await app.waitUntil(async () => (await ids()).length === before.length + 1, { timeout: 10000, timeoutMsg: 'no new chat' });
  const id = (await ids()).find((i) => !before.includes(i));
  const askToDelete = () => app.execute((i) => document.querySelector(`.chat-item[data-id="${i}"] button[aria-label="Delete chat"]`).click(), id);
  await askToDelete();
  await (await $('dialog[open] button[aria-label="Cancel"]')).click();
  await app.waitUntil(() => app.execute(() => !document.querySelector('dialog')), { timeout: 10000, timeoutMsg: 'the question stayed' });
  assert.ok((await ids()).includes(id), 'Cancel keeps the chat');
  await askToDelete();
  // On top of the window: checked here, as WebKitWebDriver's screenshot did not show the modal.
  assert.ok(await app.execute(() => {
    const d = document.querySelector('dialog[open]');
    const r = d.getBoundingClientRect();
    return d.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2));
  }), 'the question is on top');
  await shot('delete-question');
  await (await $('dialog[open] button[aria-label="Confirm delete"]')).click();
  await app.waitUntil(async () => !(await ids()).includes(id), { timeout: 10000, timeoutMsg: 'the chat was not deleted' });
  assert.deepEqual(await ids(), before);
});

/** A port nothing listens on now, for the app's Local API server. */
async function freePort() {
  const probe = createTcpServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

e2e('the Local API server switches on, answers from the demo model, and closes its port when off', async () => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}/v1`;
  await (await $('button[aria-label="Local API server"]')).click();
  await waitText('section[aria-label="Local API server"] .api-state', /^Off\.$/, 20000);
  // The port typed, then the switch, which applies both (one render, so no stale element).
  await app.execute((p) => {
    document.querySelector('input[aria-label="Port"]').value = String(p);
    document.querySelector('input[aria-label="Serve the API"]').click();
  }, port);
  await waitText('section[aria-label="Local API server"] .api-state', new RegExp(`^Serving at ${base.replace(/[./]/g, '\\$&')}`), 20000);
  assert.equal(await app.execute(() => document.querySelector('button[aria-label="Local API server"]').textContent), 'API server: on');
  const curl = await app.execute(() => document.querySelector('pre[aria-label="curl example"]').textContent);
  assert.ok(curl.startsWith(`curl ${base}/chat/completions`), curl);
  await shot('api-server-on');

  const models = await (await fetch(`${base}/models`)).json();
  assert.deepEqual(models.data.map((m) => m.id), ['gemma-3n-demo']);
  const res = await fetch(`${base}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gemma-3n-demo', messages: [{ role: 'user', content: 'Hello from the API test' }], max_tokens: 8, temperature: 0 }),
  });
  const reply = await res.json();
  assert.equal(res.status, 200, JSON.stringify(reply));
  assert.equal(reply.choices[0].message.role, 'assistant');
  assert.equal(typeof reply.choices[0].message.content, 'string');
  assert.ok(reply.usage.completion_tokens > 0 && reply.usage.completion_tokens <= 8, JSON.stringify(reply.usage));

  await (await $('input[aria-label="Serve the API"]')).click();
  await waitText('section[aria-label="Local API server"] .api-state', /^Off\.$/, 20000);
  const refused = await fetch(`${base}/models`).then(() => null, (e) => e.cause?.code ?? String(e));
  assert.equal(refused, 'ECONNREFUSED', 'the port is closed once the server is off');
  await (await $('button[aria-label="Close API server settings"]')).click();
});

// A stand-in for the Hugging Face Hub at $HF_ENDPOINT (set by scripts/test-desktop.sh): the demo
// model's files as the repo google/gemma-3n-E2B-it, sent slowly enough for progress to show.
const HUB_REPO = 'google/gemma-3n-E2B-it';
const HUB_COMMIT = 'e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0';

/** What the Hub served, with times: kept next to the app's log. */
const hubLog = (line) => appendFileSync(join(artifacts, 'hub.log'), `${new Date().toISOString()} ${line}\n`);

function startHub(port) {
  rmSync(join(artifacts, 'hub.log'), { force: true });
  const dir = join(fixtures, 'model');
  const files = readdirSync(dir).map((name) => {
    const bytes = readFileSync(join(dir, name));
    const digest = (alg) => createHash(alg).update(bytes).digest('hex');
    return { name, bytes, sha1: digest('sha1'), sha256: digest('sha256') };
  });
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://hub');
    hubLog(`${req.method} ${url.pathname} ${req.headers.range ?? ''}`);
    if (url.pathname.startsWith(`/api/models/${HUB_REPO}`)) {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({
        sha: HUB_COMMIT,
        siblings: files.map((f) => f.name.endsWith('.safetensors')
          ? { rfilename: f.name, size: 134, blobId: f.sha1, lfs: { sha256: f.sha256, size: f.bytes.length } }
          : { rfilename: f.name, size: f.bytes.length, blobId: f.sha1 }),
      }));
      return;
    }
    const f = files.find((f) => url.pathname === `/${HUB_REPO}/resolve/${HUB_COMMIT}/${f.name}`);
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    const start = Number(/bytes=(\d+)-/.exec(req.headers.range ?? '')?.[1] ?? 0);
    const size = f.bytes.length;
    res.writeHead(start ? 206 : 200, {
      'content-length': size - start,
      ...(start ? { 'content-range': `bytes ${start}-${size - 1}/${size}` } : {}),
    });
    const began = Date.now();
    let [sent, last, longestGap] = [0, began, 0];
    for (let at = start; at < size && !res.destroyed; at += 64 * 1024) {
      const chunk = f.bytes.subarray(at, at + 64 * 1024);
      sent += chunk.length;
      res.write(chunk);
      await new Promise((r) => setTimeout(r, 25));
      longestGap = Math.max(longestGap, Date.now() - last);
      last = Date.now();
    }
    res.end();
    hubLog(`${f.name} from byte ${start}: ${sent} bytes in ${Date.now() - began} ms, longest pause ${longestGap} ms${sent < size - start ? ', connection lost' : ''}`);
  });
  server.listen(Number(port), '127.0.0.1');
  return server;
}

e2e('a model downloads from the Hub with progress, then loads and answers', async () => {
  assert.ok(process.env.HUB_PORT, 'HUB_PORT and HF_ENDPOINT come from scripts/test-desktop.sh');
  const hub = startHub(process.env.HUB_PORT);
  try {
    // Nothing but the demo model yet: the Models panel is open, as on a first run.
    await waitText('section[aria-label="Models"]', /Download 10\.9 GB/);
    assert.ok(await (await $('section[aria-label="Models"]')).isDisplayed());
    await shot('models');
    await (await $('button[aria-label="Download Gemma 3n E2B"]')).click();
    await app.waitUntil(() => app.execute(() => {
      const bar = document.querySelector('progress[aria-label="Download progress"]');
      return !!bar && bar.value > 0 && bar.value < bar.max;
    }), { timeout: 30000, interval: 50, timeoutMsg: 'no download progress was shown' });
    await waitText('.download-text', /of \d+ MB · .+\/s/);
    await shot('downloading');
    // The finished download is loaded at once, and named by its repo.
    await waitText('.model-badge', /^google\/gemma-3n-E2B-it$/, 120000);
    await waitText('section[aria-label="Models"]', /On this computer — works offline/);
    // The model details say where it runs: the CPU kernels' level, chosen at start-up.
    await waitText('section[aria-label="Models"]', /running on CPU, (baseline|avx2|avx512|amx) kernels\./);
    // The app's log tells the same story, for whoever must find where a download stopped.
    const log = appLogTail(200);
    assert.match(log, /google\/gemma-3n-E2B-it downloaded in [\d.]+ s/);
    assert.match(log, /model "google\/gemma-3n-E2B-it" ready in/);
    await (await $('button[aria-label="New chat"]')).click();
    await type('Hello, downloaded model');
    const before = await replyCount();
    await (await $('button[aria-label="Send"]')).click();
    await waitReplyEnded(before + 1);
    await shot('downloaded-model-reply');
  } finally {
    hub.close();
  }
});

e2e('an E4B-like model offers its nested sizes: one is chosen, the model reloads at it and answers', async () => {
  // Fixture M is a tiny MatFormer with its own table of slices (tests/reference/make_matformer.py).
  const models = await $('section[aria-label="Models"]');
  if (!(await models.isDisplayed())) await (await $('button[aria-label="Models"]')).click();
  await (await $('input[aria-label="Model folder"]')).setValue(join(root, 'tests/fixtures/M/model'));
  await (await $('button[aria-label="Open the typed model folder"]')).click();
  await waitText('.model-badge', /^model$/, 120000);
  await waitText('.size-detail', /^Whole model \(loaded\): 15 layers, 363 K effective parameters; weights q4k .+; in f32 it decodes about 1\.00× as fast/);
  // Sizes go smallest first: e2b_like (10 layers), skip (11), narrow (15, narrower), whole.
  await app.execute(() => {
    const slider = document.querySelector('input[aria-label="Model size"]');
    slider.value = '1';
    slider.dispatchEvent(new Event('input', { bubbles: true }));
  });
  await waitText('.size-detail', /^skip: 11 layers, 238 K effective parameters; .+ decodes about 1\.\d\d× as fast/);
  await shot('model-size-chosen');
  await (await $('button[aria-label="Load the chosen model size"]')).click();
  await waitText('.model-badge', /^model · skip$/, 120000);
  await waitText('section[aria-label="Models"]', /Loaded: model at size skip/);
  await waitText('.size-detail', /^skip \(loaded\): 11 layers/);
  assert.match(appLogTail(200), /model "model" ready in/);
  await (await $('button[aria-label="New chat"]')).click();
  await type('Hello, smaller model');
  const before = await replyCount();
  await (await $('button[aria-label="Send"]')).click();
  await waitReplyEnded(before + 1);
  await waitText(lastReply, /tokens\/s/);
  await shot('sliced-model-reply');
});
