// Encrypted channels (CHANNEL_CIPHER_KEY) read by the real clients: ably-js with the key gets the change
// events as objects, live and from history; a client without the key gets the ciphertext; the Models SDK
// with the key converges as in models.test.js, and so does the demo page in Chromium (make demo
// DEMO_ENCRYPT=1). The chain is demo.stack with `--cipher-key`.
import assert from 'node:assert/strict';
import { createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { useChannelCipher } from '../../demo/web/channel-cipher.js';
import { mergeDocument } from '../../demo/web/merge.js';
import { launchBrowser, openDemoPage, placeThenShip } from './helpers/browser.js';
import { backend, modelsClient, realtime, uniqueId, waitFor } from './helpers/clients.js';
import { ROOT, startStack } from './helpers/stack.js';

const KEY = randomBytes(32).toString('base64');
const ENCODING = 'json/utf-8/cipher+aes-256-cbc/base64';

let stack;
let api;
before(async () => {
  // A model per document (`orders:<id>`), and the demo page's model of the collection (`orders`).
  stack = await startStack({ pipelines: ['models-sdk.json', 'models-sdk-collection.json'], cipherKey: KEY });
  api = backend(stack.info);
});
after(async () => stack?.stop());

// What the Ably emulator stores, read over plain REST (no SDK): data and encoding as published.
async function stored(channel) {
  const auth = Buffer.from(stack.info.ablyKey).toString('base64');
  const url = `${stack.info.ably}/channels/${encodeURIComponent(channel)}/messages?direction=forwards`;
  const response = await fetch(url, { headers: { authorization: `Basic ${auth}`, 'x-ably-version': '6' } });
  assert.equal(response.status, 200);
  return response.json();
}

// The change event inside one stored message, decrypted here with node:crypto (independently of ably-js).
function decrypt(message) {
  assert.equal(message.encoding, ENCODING);
  const raw = Buffer.from(message.data, 'base64');
  const decipher = createDecipheriv('aes-256-cbc', Buffer.from(KEY, 'base64'), raw.subarray(0, 16));
  return JSON.parse(Buffer.concat([decipher.update(raw.subarray(16)), decipher.final()]).toString('utf8'));
}

// Subscribe to `channel` (with `options`), collecting the messages as delivered; resolves once attached.
async function subscriber(channel, options) {
  const ably = realtime(stack.info);
  const ch = options ? ably.channels.get(channel, options) : ably.channels.get(channel);
  const received = [];
  await ch.subscribe((message) => received.push(message));
  return { ably, ch, received };
}

test('ably-js with the key reads live and history messages as the change events', async () => {
  const id = uniqueId('order');
  const channel = `orders:${id}`;
  const withKey = await subscriber(channel, { cipher: { key: KEY } });
  try {
    await api.insert({ _id: id, status: 'placed', total: 5, note: 'Zoë' });
    await api.update(id, { status: 'paid' });
    await api.remove(id);
    await waitFor(() => withKey.received.length === 3, 'three live messages');
    const raw = await stored(channel);
    assert.equal(raw.length, 3);
    const events = raw.map(decrypt);
    assert.deepEqual(
      events.map((e) => e.operationType),
      ['insert', 'update', 'delete'],
    );
    assert.deepEqual(events[0].fullDocument, { _id: id, status: 'placed', total: 5, note: 'Zoë' });
    const live = withKey.received;
    const history = (await withKey.ch.history({ direction: 'forwards' })).items;
    for (const messages of [live, history]) {
      assert.deepEqual(
        messages.map((m) => m.data),
        events,
        'the decoded data is the change event, an object',
      );
      assert.deepEqual(
        messages.map((m) => [m.id, m.name, m.extras.headers['x-ably-models-event-uuid']]),
        raw.map((m) => [m.id, m.name, m.extras.headers['x-ably-models-event-uuid']]),
      );
      assert.ok(messages.every((m) => !m.encoding), 'fully decoded');
    }
  } finally {
    withKey.ably.close();
  }
});

test('a client without the key gets the ciphertext, its encoding left at the cipher step', async () => {
  const id = uniqueId('order');
  const channel = `orders:${id}`;
  const noKey = await subscriber(channel);
  try {
    await api.insert({ _id: id, status: 'placed' });
    await waitFor(() => noKey.received.length === 1, 'the live message');
    const [message] = noKey.received;
    const [raw] = await stored(channel);
    assert.equal(message.encoding, 'json/utf-8/cipher+aes-256-cbc');
    assert.ok(!('operationType' in message.data), 'no plaintext without the key');
    assert.equal(Buffer.from(message.data).toString('base64'), raw.data, 'the ciphertext as published');
    assert.equal(message.id, raw.id);
    assert.equal(message.name, 'insert');
    assert.equal(decrypt(raw).fullDocument.status, 'placed');
  } finally {
    noKey.ably.close();
  }
});

test('the Models SDK with the key converges through inserts, updates and deletes', async () => {
  const id = uniqueId('order');
  const channelName = `orders:${id}`;
  await api.insert({ _id: id, status: 'placed', total: 5 });
  await api.update(id, { status: 'paid' }); // history before the model exists
  const ably = realtime(stack.info);
  // @ably-labs/models 0.0.4 opens its channel by name and resets its options before attaching: the
  // page's helper gives every channel of this client the key, and keeps it there (demo/web/channel-cipher.js).
  useChannelCipher(ably, KEY);
  const syncs = [];
  const model = modelsClient(ably).models.get({
    channelName,
    sync: async () => {
      const result = await api.syncOne(id);
      syncs.push(result.sequenceId);
      return result;
    },
    merge: mergeDocument,
  });
  const confirmed = () => model.data.confirmed;
  try {
    await model.sync();
    assert.deepEqual(confirmed(), { _id: id, status: 'paid', total: 5 });
    await api.update(id, { status: 'packed', total: 6 });
    await waitFor(() => confirmed()?.status === 'packed', 'the live update');
    assert.deepEqual(confirmed(), (await api.syncOne(id)).data);
    await api.remove(id);
    await waitFor(() => confirmed() === null, 'the delete');
    await api.insert({ _id: id, status: 'placed', total: 7 });
    await waitFor(() => confirmed()?.total === 7, 'the re-insert');
    assert.deepEqual(confirmed(), (await api.syncOne(id)).data);
    assert.equal(syncs.length, 1);
    assert.ok((await stored(channelName)).every((m) => m.encoding === ENCODING), 'every message encrypted');
  } finally {
    await model.dispose().finally(() => ably.close());
  }
});

test('the demo page holds the key and shows the orders live', async () => {
  assert.equal(stack.info.pageProblem, null);
  const browser = await launchBrowser();
  try {
    // A model that cannot read its events (no key) still shows the orders, by a sync() per event: count them.
    const syncs = [];
    const { page, problems } = await openDemoPage(browser, stack.info, (p) =>
      p.on('request', (request) => new URL(request.url()).pathname === '/api/orders' && syncs.push(request.url())),
    );
    await placeThenShip(page, api);
    assert.equal(syncs.length, 1, 'the model merged the decrypted events, without a resync');
    assert.ok((await stored('orders')).every((m) => m.encoding === ENCODING), 'the page read ciphertext');
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});

test('README.md shows useChannelCipher exactly as tested', () => {
  const read = (file) => readFileSync(path.join(ROOT, file), 'utf8');
  const code = read('demo/web/channel-cipher.js').replace(/^export /m, '').trim();
  assert.ok(read('README.md').includes(code));
});
