// Gemma Chat UI: plain TypeScript and the DOM (see ui/README.md for why no framework).
// This file lays out the window and connects the views; each view is its own module.
import './styles.css';
import { ApiServerView } from './api-server';
import { ChatSettingsView } from './chat-settings';
import { Composer } from './composer';
import { ConversationView } from './conversation';
import { Alerts, button, h } from './dom';
import { keyAction } from './format';
import { ModelsView } from './models';

async function start(root: HTMLElement): Promise<void> {
  const alerts = new Alerts();
  // The views call each other through these hooks, wired once all exist.
  const models: ModelsView = new ModelsView({ alerts, onStatus: () => settings.refresh() });
  const conversation: ConversationView = new ConversationView({
    alerts,
    onGenerating: (on) => composer.setGenerating(on),
    onShown: () => settings.refresh(),
    onReplyDone: (stats) => models.noteReplySpeed(stats),
  });
  const composer = new Composer({
    alerts,
    send: (text, attachments) => conversation.send(text, attachments),
    stop: () => void conversation.stop(),
  });
  const settings = new ChatSettingsView({
    alerts,
    current: () => conversation.current,
    reload: () => conversation.reloadCurrent(),
    defaults: () => models.defaults(),
  });
  const apiServer = new ApiServerView(alerts);

  const newChat = async () => {
    if (await conversation.newChat()) composer.focus();
  };
  const header = h(
    'header',
    { class: 'topbar' },
    conversation.title,
    models.badge,
    button('Models', 'Models', () => models.toggle()),
    apiServer.toggleButton,
    button('Chat settings', 'Settings', () => settings.toggle()),
  );
  const main = h('main', { class: 'main' }, header, models.el, apiServer.el, settings.el, alerts.el, conversation.log, composer.element());
  root.append(h('div', { class: 'shell' }, conversation.sidebar(() => void newChat()), main, composer.dropOverlay));

  window.addEventListener('keydown', (e) => {
    const action = keyAction(e, false);
    if (action === 'stop' && conversation.isStreaming) {
      e.preventDefault();
      void conversation.stop();
    } else if (action === 'newChat') {
      e.preventDefault();
      void newChat();
    }
  });

  await models.start();
  await apiServer.start();
  await conversation.start();
  composer.focus();
}

void start(document.getElementById('app')!);
