// The demo page: one Models SDK model of the `orders` channel (pipelines/models-sdk-collection.json),
// whose sync() is the backend's GET /api/orders; the connector's metrics beside it.
import { useChannelCipher } from './channel-cipher.js';
import { livesyncOrderer } from './livesync-orderer.js';
import { mergeList } from './merge.js';
import { pauseWhileDisconnected } from './pause-while-disconnected.js';
import { resyncOnTruncated } from './resync-on-truncated.js';

const METRICS_POLL_MS = 1000;
const state = document.getElementById('state');

function render(orders) {
  const rows = (orders ?? []).map((order) => {
    const row = document.createElement('tr');
    row.dataset.id = order._id;
    for (const value of [order._id, order.status, order.total]) {
      const cell = document.createElement('td');
      cell.textContent = value ?? '';
      row.append(cell);
    }
    return row;
  });
  document.getElementById('orders').replaceChildren(...rows);
}

async function showMetrics() {
  const metrics = await (await fetch('/api/metrics')).json();
  for (const name of ['eventsRead', 'messagesPublished']) {
    document.getElementById(name).textContent = metrics[name] ?? '–';
  }
  const lag = metrics.lagSeconds;
  document.getElementById('lagSeconds').textContent = lag === undefined ? '–' : `${(lag * 1000).toFixed(0)} ms`;
}

async function main() {
  const config = await (await fetch('/api/config')).json();
  if (!config.bundle) throw new Error(config.bundleProblem);
  const { Ably, ModelsClient } = await import(config.bundle);
  const ably = new Ably.Realtime({
    key: config.ably.key, // a demo key on a local emulator; a real page would use token auth
    endpoint: config.ably.endpoint,
    port: config.ably.port,
    tls: false,
    useBinaryProtocol: false,
    transports: ['web_socket'],
  });
  // `make demo DEMO_ENCRYPT=1`: the connector encrypts the channel; the page holds the key (a demo shortcut:
  // a real page would get its key from its backend, after authenticating the user).
  if (config.cipherKey) useChannelCipher(ably, config.cipherKey);
  const models = new ModelsClient({ ably, eventBufferOptions: { eventOrderer: livesyncOrderer } });
  const model = models.models.get({
    channelName: config.channel,
    // A change too big for Ably arrives truncated (x-livesync-truncated): mergeList throws, the model
    // resyncs through sync(); the wrapper keeps that resync clear of the SDK's detach race.
    ...resyncOnTruncated({
      ably,
      channelName: config.channel,
      sync: async () => (await fetch('/api/orders')).json(),
      merge: mergeList,
    }),
  });
  pauseWhileDisconnected(ably, model);
  model.on((change) => (state.textContent = `model ${change.current}`));
  await model.sync();
  model.subscribe((err, orders) => (err ? (state.textContent = `error: ${err.message}`) : render(orders)));
  setInterval(() => showMetrics().catch(() => {}), METRICS_POLL_MS);
  await showMetrics();
}

main().catch((err) => {
  state.textContent = `cannot start: ${err.message}`;
  state.className = 'problem';
});
