// UI tests in headless Debian Chromium against the mocked backend (ui/dist-mock).
// Run: npm run build:mock && npm run test:ui
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const dist = resolve(here, '../dist-mock');
const fixtures = resolve(here, '../../tests/fixtures/C');
const shots = resolve(process.env.ARTIFACTS_DIR ?? resolve(here, '../../artifacts/desktop'), 'browser');
mkdirSync(shots, { recursive: true });

// The app's CSP (src-tauri/tauri.conf.json), less the IPC origins the mock does not use.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; " +
  "media-src 'self' blob:; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-src 'none'";
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
let browser;
let page;
const errors = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => browser?.close());

/** A fresh page on the mocked app, served from disk with no server. */
async function openApp(colorScheme = 'light') {
  const context = await browser.newContext({ colorScheme, viewport: { width: 1100, height: 720 } });
  await context.route('http://app.test/**', (route) => {
    const path = new URL(route.request().url()).pathname.replace(/^\/$/, '/index.html');
    const file = join(dist, path === '/index.html' ? 'mock/index.html' : path);
    if (!existsSync(file)) return route.fulfill({ status: 404, body: '' });
    route.fulfill({ body: readFileSync(file), headers: { 'content-security-policy': csp }, contentType: types[file.slice(file.lastIndexOf('.'))] ?? 'application/octet-stream' });
  });
  page = await context.newPage();
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page.on('pageerror', (e) => errors.push(e));
  // The app asks in the page: a native dialog here would be the dialog plugin's, which it may not use.
  page.on('dialog', (d) => {
    errors.push(new Error(`native dialog: ${d.message()}`));
    void d.dismiss();
  });
  await page.goto('http://app.test/');
  await page.getByRole('textbox', { name: 'Message' }).waitFor();
  return page;
}

async function send(text) {
  await page.getByRole('textbox', { name: 'Message' }).fill(text);
  await page.getByRole('textbox', { name: 'Message' }).press('Enter');
}

const lastReply = () => page.locator('article.message.assistant').last();

test('every control has an accessible name and the demo model is labelled', async () => {
  await openApp();
  for (const name of ['Send', 'Attach', 'Record', 'New chat', 'Chat settings']) {
    await page.getByRole('button', { name, exact: true }).waitFor({ state: 'attached' });
  }
  await page.getByRole('searchbox', { name: 'Search chats' }).waitFor();
  assert.equal(await page.getByRole('status').first().textContent(), 'Demo model — replies are noise');
  const unnamed = await page.$$eval('button, input, textarea', (els) =>
    els.filter((e) => !e.hidden && !(e.getAttribute('aria-label') || e.textContent.trim())).map((e) => e.outerHTML));
  assert.deepEqual(unnamed, []);
});

test('a message streams a reply with its speed and time to first token', async () => {
  await send('Hello there');
  await page.getByRole('button', { name: 'Stop' }).waitFor();
  await lastReply().locator('.stats').waitFor();
  assert.equal((await lastReply().locator('.content').textContent()).trim(), 'Hello from the mock.');
  const stats = await lastReply().locator('.stats').textContent();
  assert.match(stats, /25\.5 tokens\/s · TTFT 42 ms · 4 tokens/);
  assert.equal(await page.locator('.chat-title').textContent(), 'Hello there');
  await page.getByRole('button', { name: 'Regenerate' }).waitFor();
  await page.getByRole('button', { name: 'Send' }).waitFor();
  await page.screenshot({ path: join(shots, 'reply-light.png') });
});

test('model output with script and event handlers renders inert', async () => {
  await page.evaluate(() => {
    window.__mock.reply = [
      '<img src=x onerror="window.__pwned = 1">', '\n\n<script>window.__pwned = 2</script>',
      '\n\n<a href="javascript:window.__pwned=3">link</a> <iframe src="https://example.com"></iframe>',
      '\n\n**bold** and\n\n```js\nconst x = "<b>1</b>";\n```\n',
    ];
  });
  await send('Show me HTML');
  await lastReply().locator('.stats').waitFor();
  const reply = lastReply().locator('.content');
  assert.equal(await reply.locator('script, iframe').count(), 0);
  assert.equal(await reply.locator('[onerror]').count(), 0);
  assert.equal(await reply.locator('a[href^="javascript"]').count(), 0);
  await reply.locator('a').click();
  await reply.locator('img').evaluate((img) => img.dispatchEvent(new Event('error')));
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.equal(await reply.locator('strong').textContent(), 'bold');
  assert.equal(await reply.locator('pre code').textContent(), 'const x = "<b>1</b>";\n');
  await reply.getByRole('button', { name: 'Copy code' }).waitFor();
  assert.ok(await reply.locator('pre code .hljs-string').count() > 0, 'code is highlighted');
  assert.equal(page.url(), 'http://app.test/', 'a link in a reply does not navigate');
});

test('Stop and Esc end a reply midway and keep what was written', async () => {
  await page.evaluate(() => {
    window.__mock.reply = Array.from({ length: 300 }, (_, i) => `w${i} `);
    window.__mock.delayMs = 20;
  });
  await send('Long story');
  await lastReply().locator('.content').filter({ hasText: 'w3' }).waitFor();
  await page.getByRole('button', { name: 'Stop' }).click();
  await lastReply().locator('.stats').waitFor();
  assert.match(await lastReply().locator('.stats').textContent(), /stopped/);
  assert.equal(await lastReply().locator('.note').textContent(), 'Stopped.');
  const words = (await lastReply().locator('.content').textContent()).trim().split(/\s+/).length;
  assert.ok(words > 3 && words < 300, `${words} words`);

  await page.getByRole('button', { name: 'Regenerate' }).click();
  await lastReply().locator('.content').filter({ hasText: 'w2' }).waitFor();
  await page.keyboard.press('Escape');
  await lastReply().locator('.stats').waitFor();
  assert.match(await lastReply().locator('.stats').textContent(), /stopped/);
  await page.evaluate(() => {
    window.__mock.reply = ['ok'];
    window.__mock.delayMs = 5;
  });
});

test('Shift+Enter adds a line; edit and resend replaces the rest', async () => {
  const box = page.getByRole('textbox', { name: 'Message' });
  await box.fill('line one');
  await box.press('Shift+Enter');
  await box.pressSequentially('line two');
  assert.equal(await box.inputValue(), 'line one\nline two');
  await box.press('Enter');
  await lastReply().locator('.stats').waitFor();
  const before = await page.locator('article.message').count();
  await page.getByRole('button', { name: 'Edit message' }).first().click();
  await page.getByRole('textbox', { name: 'Edit message text' }).fill('Hello, edited');
  await page.getByRole('button', { name: 'Save and resend' }).click();
  await page.locator('article.message').nth(2).waitFor({ state: 'detached' });
  await lastReply().locator('.stats').waitFor();
  assert.equal(await page.locator('article.message').count(), 2);
  assert.ok(before > 2);
  assert.equal(await page.locator('article.message.user .content').textContent(), 'Hello, edited');
});

async function fileInPage(name, type, path) {
  return { name, type, bytes: [...readFileSync(path)] };
}

test('images and audio attach by picker, paste and drop, and show in the message', async () => {
  await page.getByRole('button', { name: 'New chat' }).click();
  const chooser = page.waitForEvent('filechooser');
  await page.getByRole('button', { name: 'Attach' }).click();
  await (await chooser).setFiles([join(fixtures, 'image.png')]);
  await page.locator('.tray img.thumb').waitFor();

  const wav = await fileInPage('clip.wav', 'audio/wav', join(fixtures, 'audio_16k_mono.wav'));
  await page.evaluate((f) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: f.type }));
    window.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
  }, wav);
  await page.locator('.tray audio').waitFor();

  const jpg = { name: 'notes.txt', type: 'text/plain', bytes: [104, 105] };
  await page.evaluate((f) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(f.bytes)], f.name, { type: f.type }));
    window.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true }));
  }, jpg);
  await page.getByRole('alert').getByText('notes.txt is not an image or audio file').waitFor();
  assert.equal(await page.locator('.tray-item').count(), 2);

  await page.getByRole('button', { name: 'Send' }).click();
  const mine = page.locator('article.message.user').last();
  await mine.locator('img.thumb').waitFor();
  await mine.locator('audio').waitFor();
  assert.equal(await page.locator('.tray-item').count(), 0);
  await lastReply().locator('.stats').waitFor();
  assert.ok(await mine.locator('img.thumb').evaluate((img) => img.complete && img.naturalWidth > 0), 'thumbnail decodes');
  await page.screenshot({ path: join(shots, 'attachments.png') });
});

test('errors from the backend are shown with their message', async () => {
  await page.evaluate(() => {
    window.__mock.failNext.send_message = { kind: 'modelLoading', message: 'The model is still loading. Try again in a moment.' };
  });
  await send('too early');
  await page.locator('.alert[data-kind="modelLoading"]').getByText('still loading').waitFor();
  assert.equal(await page.getByRole('textbox', { name: 'Message' }).inputValue(), 'too early', 'the draft is kept');
  await page.getByRole('button', { name: 'Record' }).click();
  await page.locator('.alert[data-kind="recording"]').waitFor();
});

test('chats can be searched, renamed, deleted, and Ctrl+N starts one', async () => {
  const items = page.locator('.chat-item');
  const n = await items.count();
  await page.keyboard.press('Control+n');
  await page.waitForFunction((n) => document.querySelectorAll('.chat-item').length === n + 1, n);
  await page.getByRole('searchbox', { name: 'Search chats' }).fill('hello, edited');
  await page.waitForFunction(() => document.querySelectorAll('.chat-item').length === 1);
  await items.first().hover();
  await items.first().getByRole('button', { name: 'Rename chat' }).click();
  await page.getByRole('textbox', { name: 'Chat name' }).fill('Greetings');
  await page.getByRole('textbox', { name: 'Chat name' }).press('Enter');
  await page.getByRole('searchbox', { name: 'Search chats' }).fill('');
  await page.getByRole('button', { name: 'Open chat Greetings' }).waitFor();
  await page.getByRole('button', { name: 'Open chat Greetings' }).hover();
  await page.locator('.chat-item', { hasText: 'Greetings' }).getByRole('button', { name: 'Delete chat' }).click();
  // Cancel keeps it; the in-page question asks again and Delete removes it.
  await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
  await page.getByRole('dialog').waitFor({ state: 'detached' });
  await page.getByRole('button', { name: 'Open chat Greetings' }).hover();
  await page.locator('.chat-item', { hasText: 'Greetings' }).getByRole('button', { name: 'Delete chat' }).click();
  await page.getByRole('dialog', { name: 'Delete “Greetings”? This cannot be undone.' }).getByRole('button', { name: 'Confirm delete' }).click();
  await page.getByRole('button', { name: 'Open chat Greetings' }).waitFor({ state: 'detached' });
});

test('settings hold the system prompt and sampling, defaulting to the model', async () => {
  await page.getByRole('button', { name: 'Chat settings' }).click();
  assert.equal(await page.getByRole('spinbutton', { name: 'Top-k' }).inputValue(), '64');
  await page.getByRole('textbox', { name: 'System prompt' }).fill('Answer in French.');
  await page.getByRole('spinbutton', { name: 'Temperature' }).fill('0.3');
  await page.getByRole('button', { name: 'Save settings' }).click();
  const calls = await page.evaluate(() => window.__mock.calls.filter((c) => c.cmd === 'set_sampling' || c.cmd === 'set_system_prompt').map((c) => c.args));
  assert.equal(calls.at(-2).prompt, 'Answer in French.');
  assert.equal(calls.at(-1).sampling.temperature, 0.3);
  assert.equal(calls.at(-1).sampling.topK, 64);
});

test('first run offers the models; a download shows progress, cancels, fails clearly and resumes', async () => {
  const models = page.getByRole('region', { name: 'Models' });
  await models.getByText('Download 10.9 GB').waitFor();
  await models.getByText('Free disk space: 12.0 GB in /home/me/.cache/huggingface/hub').waitFor();
  await models.getByText(/No OS keychain is available .* session only/).waitFor();
  // E4B (15.7 GB) cannot fit in 12 GB: said at once, and refused when tried.
  await models.getByText('Not enough free disk space (needs 15.7 GB)').waitFor();
  await models.getByRole('button', { name: 'Download Gemma 3n E4B' }).click();
  await page.locator('.alert[data-kind="download"]').getByText('not enough disk space').waitFor();

  await models.getByRole('button', { name: 'Download Gemma 3n E2B' }).click();
  await models.getByRole('progressbar', { name: 'Download progress' }).waitFor();
  await models.getByText(/GB of 10\.9 GB · 25 MB\/s · .+ left — model-00001-of-00004\.safetensors/).waitFor();
  await page.screenshot({ path: join(shots, 'download.png') });
  await models.getByRole('button', { name: 'Cancel download' }).click();
  await models.getByRole('button', { name: 'Resume download Gemma 3n E2B' }).waitFor();
  await models.getByText(/GB already here/).waitFor();

  await page.evaluate(() => { window.__mock.downloadFails = true; });
  await models.getByRole('button', { name: 'Resume download Gemma 3n E2B' }).click();
  await page.locator('.alert[data-kind="download"]').getByText('the connection was lost').waitFor();
  await models.getByRole('button', { name: 'Resume download Gemma 3n E2B' }).click();
  await models.getByRole('button', { name: 'Use Gemma 3n E2B' }).waitFor();
  await models.getByText('On this computer — works offline').waitFor();
  const opened = await page.evaluate(() => window.__mock.calls.filter((c) => c.cmd === 'open_model').map((c) => c.args.path));
  assert.match(opened.at(-1), /models--google--gemma-3n-E2B-it\/snapshots\//, 'the finished download is loaded');
  // The mock's load ends before open_model's response arrives, as a small one can in the app.
  await page.getByRole('status').getByText('google/gemma-3n-E2B-it', { exact: true }).waitFor();

  await models.getByLabel('Hugging Face token').fill('hf_secret');
  await models.getByRole('button', { name: 'Save token' }).click();
  await models.getByRole('combobox', { name: 'Weight format' }).selectOption('q4k');
  await models.getByRole('spinbutton', { name: 'Threads' }).fill('2');
  await models.getByRole('button', { name: 'Save load settings' }).click();
  const calls = await page.evaluate(() => window.__mock.calls.filter((c) => ['save_token', 'set_load_settings'].includes(c.cmd)).map((c) => c.args));
  assert.deepEqual(calls, [{ token: 'hf_secret' }, { settings: { weights: 'q4k', threads: 2, sizes: {} } }]);
  await page.evaluate(() => { window.__mock.loadStopsAt = 0.42; });
  await models.getByRole('button', { name: 'Reload model with these settings' }).click();
  await page.getByRole('status').getByText('Loading model… 42%').waitFor();
});

test('Open model folder… opens the folder chosen in the native picker; Cancel changes nothing', async () => {
  const models = page.getByRole('region', { name: 'Models' });
  const since = await page.evaluate(() => window.__mock.calls.length);
  await page.evaluate(() => { window.__mock.loadStopsAt = null; window.__mock.folderPick = null; });
  await models.getByRole('button', { name: 'Open model folder' }).click();
  await page.waitForFunction((since) => window.__mock.calls.slice(since).some((c) => c.cmd === 'plugin:dialog|open'), since);
  await page.evaluate(() => { window.__mock.folderPick = '/home/me/models/gemma-3n-E4B-it'; });
  await models.getByRole('button', { name: 'Open model folder' }).click();
  await page.getByRole('status').getByText('gemma-3n-E4B-it', { exact: true }).waitFor();
  const calls = await page.evaluate((since) => window.__mock.calls.slice(since).filter((c) => c.cmd === 'plugin:dialog|open' || c.cmd === 'open_model'), since);
  const dialog = { cmd: 'plugin:dialog|open', args: { options: { directory: true, title: 'Open a Gemma 3n model folder' } } };
  // The cancelled pick opened nothing; the chosen folder went through open_model.
  assert.deepEqual(calls, [dialog, dialog, { cmd: 'open_model', args: { path: '/home/me/models/gemma-3n-E4B-it' } }]);
});

test('the Local API server panel switches on, shows the URL and a curl, and says when the port is taken', async () => {
  await page.getByRole('button', { name: 'Local API server' }).click();
  const panel = page.getByRole('region', { name: 'Local API server' });
  // Off by default, on the default port.
  await panel.getByText('Off.', { exact: true }).waitFor();
  assert.equal(await panel.getByRole('switch', { name: 'Serve the API' }).isChecked(), false);
  assert.equal(await panel.getByRole('spinbutton', { name: 'Port' }).inputValue(), '8080');
  await page.evaluate(() => {
    Object.defineProperty(navigator, 'clipboard', { value: { writeText: async (t) => { window.__copied = t; } } });
  });

  await panel.getByRole('switch', { name: 'Serve the API' }).check();
  await panel.getByText('Serving at http://127.0.0.1:8080/v1 — loopback only').waitFor();
  assert.equal(await panel.getByLabel('API base URL', { exact: true }).textContent(), 'http://127.0.0.1:8080/v1');
  const curl = await panel.getByLabel('curl example', { exact: true }).textContent();
  assert.match(curl, /^curl http:\/\/127\.0\.0\.1:8080\/v1\/chat\/completions/);
  assert.match(curl, /"model": "gemma-3n-demo"/);
  await panel.getByRole('button', { name: 'Copy curl example' }).click();
  assert.equal(await page.evaluate(() => window.__copied), curl);
  assert.equal(await page.getByRole('button', { name: 'Local API server' }).textContent(), 'API server: on');
  await page.screenshot({ path: join(shots, 'api-server.png') });

  // A port another program holds: said in the panel, and the switch stays on to retry.
  await page.evaluate(() => { window.__mock.takenPort = 8081; });
  await panel.getByRole('spinbutton', { name: 'Port' }).fill('8081');
  await panel.getByRole('spinbutton', { name: 'Port' }).press('Enter');
  await panel.getByText('Not serving: port 8081 on 127.0.0.1 is already in use by another program; choose another port').waitFor();
  assert.equal(await page.getByRole('button', { name: 'Local API server' }).textContent(), 'API server');
  await page.screenshot({ path: join(shots, 'api-server-port-taken.png') });

  // A port out of range is refused; the panel keeps showing what runs.
  await panel.getByRole('spinbutton', { name: 'Port' }).fill('70000');
  await panel.getByRole('spinbutton', { name: 'Port' }).press('Enter');
  await page.locator('.alert[data-kind="invalidInput"]').getByText('the port must be a whole number from 1 to 65535').waitFor();
  await panel.getByRole('spinbutton', { name: 'Port' }).fill('8082');
  await panel.getByRole('spinbutton', { name: 'Port' }).press('Enter');
  await panel.getByText('Serving at http://127.0.0.1:8082/v1 — loopback only').waitFor();

  await panel.getByRole('switch', { name: 'Serve the API' }).uncheck();
  await panel.getByText('Off.', { exact: true }).waitFor();
  assert.equal(await panel.getByLabel('curl example', { exact: true }).count(), 0);
  const calls = await page.evaluate(() => window.__mock.calls.filter((c) => c.cmd === 'set_api_server').map((c) => c.args.settings));
  assert.deepEqual(calls, [
    { enabled: true, port: 8080 }, { enabled: true, port: 8081 }, { enabled: true, port: 70000 },
    { enabled: true, port: 8082 }, { enabled: false, port: 8082 },
  ]);
  await panel.getByRole('button', { name: 'Close API server settings' }).click();
  assert.equal(await panel.isHidden(), true);
});

test('a message sent while the API server answers a request waits, and says so', async () => {
  await page.evaluate(() => { window.__mock.apiBusyMs = 600; window.__mock.reply = ['after', ' the API']; });
  await send('Are you free?');
  const waiting = lastReply().getByRole('note').filter({ hasText: 'Waiting for the Local API server to finish its request…' });
  await waiting.waitFor();
  await lastReply().locator('.stats').waitFor();
  assert.equal(await waiting.count(), 0);
  assert.equal((await lastReply().locator('.content').textContent()).trim(), 'after the API');
});

test('dark theme follows the OS', async () => {
  await page.context().close();
  await openApp('dark');
  await send('Hello in the dark');
  await lastReply().locator('.stats').waitFor();
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(bg, 'rgb(22, 24, 29)');
  await page.screenshot({ path: join(shots, 'reply-dark.png') });
  assert.deepEqual(errors.map(String), []);
  assert.deepEqual(await page.evaluate(() => window.__cspViolations), [], 'the UI runs under the strict CSP');
});
