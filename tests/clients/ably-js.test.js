// ably-js realtime subscribers receive every change of a MongoDB collection, in order, as the pipeline set it.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { livesyncOrderer } from '../../demo/web/livesync-orderer.js';
import { backend, realtime, rest, uniqueId, waitFor } from './helpers/clients.js';
import { startStack } from './helpers/stack.js';

let stack;
let api;
before(async () => {
  stack = await startStack();
  api = backend(stack.info);
});
after(async () => stack?.stop());

async function subscribe(client, name) {
  const received = [];
  const channel = client.channels.get(name);
  await channel.subscribe((message) => received.push(message));
  return received;
}

test('subscribers get every change in order: data an object, name and headers as the pipeline set them', async () => {
  const id = uniqueId('order');
  const client = realtime(stack.info);
  try {
    const perDocument = await subscribe(client, `orders:${id}`);
    const collection = await subscribe(client, 'orders');
    await api.insert({ _id: id, status: 'placed', total: 10, mutationId: 'm-insert' });
    await api.update(id, { status: 'paid' }, 'm-paid');
    await api.update(id, { status: 'shipped' }); // no mutation id: the header falls back to the message id
    await api.remove(id);

    await waitFor(() => perDocument.length === 4, 'four messages on the document channel');
    await waitFor(() => collection.filter((m) => m.data.documentKey._id === id).length === 4, 'the collection channel');
    const mine = collection.filter((m) => m.data.documentKey._id === id);
    for (const messages of [perDocument, mine]) {
      assert.deepEqual(
        messages.map((m) => m.name),
        ['insert', 'update', 'update', 'delete'],
      );
      assert.ok(messages.every((m) => typeof m.data === 'object' && m.data.documentKey._id === id));
      assert.deepEqual(messages[0].data.fullDocument, { _id: id, status: 'placed', total: 10, mutationId: 'm-insert' });
      assert.deepEqual(messages[1].data.updateDescription.updatedFields, { status: 'paid', mutationId: 'm-paid' });
      assert.deepEqual(
        messages.map((m) => m.extras.headers['x-ably-models-event-uuid']),
        ['m-insert', 'm-paid', messages[2].id, messages[3].id],
      );
      const ids = messages.map((m) => m.id);
      assert.deepEqual([...ids].sort(livesyncOrderer), ids, 'ids sort in stream order');
    }
    assert.deepEqual(
      perDocument.map((m) => m.id),
      mine.map((m) => m.id),
      'one event, one id, on both channels',
    );
  } finally {
    client.close();
  }
});

test('history({untilAttach}) returns what was published before the attach, as REST history does', async () => {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed' });
  await api.update(id, { status: 'paid' });
  const restChannel = rest(stack.info).channels.get(`orders:${id}`);
  await waitFor(async () => (await restChannel.history()).items.length === 2, 'both changes in history');

  const client = realtime(stack.info);
  try {
    const live = await subscribe(client, `orders:${id}`);
    await api.update(id, { status: 'shipped' });
    await waitFor(() => live.length === 1, 'the live update');
    const untilAttach = await client.channels.get(`orders:${id}`).history({ untilAttach: true });
    assert.deepEqual(
      untilAttach.items.map((m) => m.data.updateDescription?.updatedFields.status ?? m.data.fullDocument.status),
      ['paid', 'placed'],
    );
    assert.equal(live[0].data.updateDescription.updatedFields.status, 'shipped');
  } finally {
    client.close();
  }
});
