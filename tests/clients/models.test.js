// The Models SDK (@ably-labs/models 0.0.4) on the connector's channels, sync() served by the backend: the
// MongoDB source (demo.stack), then the Postgres outbox source (SOURCE=postgres, helpers/postgres_stack.py).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { livesyncOrderer } from '../../demo/web/livesync-orderer.js';
import { mergeDocument } from '../../demo/web/merge.js';
import { pauseWhileDisconnected } from '../../demo/web/pause-while-disconnected.js';
import { backend, fixedRetryStrategy, modelsClient, realtime, rest, uniqueId, waitFor } from './helpers/clients.js';
import { startPostgresStack, startStack } from './helpers/stack.js';

let stack;
let api;
before(async () => {
  stack = await startStack({ pipelines: ['models-sdk.json'] });
  api = backend(stack.info);
});
after(async () => stack?.stop());

// A model of one order document; counts its sync() calls and records its states. `options.on` is the
// stack and backend to use ({info, api}; the MongoDB one by default).
async function orderModel(id, options = {}) {
  const on = options.on ?? { info: stack.info, api };
  const ably = realtime(on.info);
  const syncs = [];
  const states = [];
  const model = modelsClient(ably, options).models.get({
    channelName: `orders:${id}`,
    sync: async () => {
      if (options.awaitDetach) {
        // The SDK's resync retry detaches the old channel without awaiting it, then re-attaches: let the
        // detach finish first, or it is superseded and the SDK leaves that rejection unhandled.
        await waitFor(() => ably.channels.all[`orders:${id}`]?.state !== 'detaching', 'the detach');
      }
      const result = await on.api.syncOne(id);
      syncs.push(result.sequenceId);
      return result;
    },
    merge: mergeDocument,
  });
  model.on((change) => states.push(change.current));
  return { ably, model, syncs, states, close: () => model.dispose().finally(() => ably.close()) };
}

const confirmed = (model) => model.data.confirmed;

// An optimistic event setting `fields` on the order, shaped as the change events both sources publish.
const updateEvent = (id, fields, mutationId) => ({
  mutationId,
  name: 'update',
  data: { operationType: 'update', documentKey: { _id: id }, updateDescription: { updatedFields: fields } },
});

test('a model converges to the database through inserts, updates and deletes', async () => {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed', total: 5 });
  await api.update(id, { status: 'paid' }); // history before the model exists
  const { model, syncs, close } = await orderModel(id);
  try {
    await model.sync();
    assert.deepEqual(confirmed(model), { _id: id, status: 'paid', total: 5 });
    await api.update(id, { status: 'packed', total: 6 });
    await waitFor(() => confirmed(model)?.status === 'packed', 'the live update');
    assert.deepEqual(confirmed(model), (await api.syncOne(id)).data);
    await api.remove(id);
    await waitFor(() => confirmed(model) === null, 'the delete');
    await api.insert({ _id: id, status: 'placed', total: 7 });
    await waitFor(() => confirmed(model)?.total === 7, 'the re-insert');
    assert.deepEqual(confirmed(model), (await api.syncOne(id)).data);
    assert.equal(syncs.length, 1);
  } finally {
    await close();
  }
});

test('after a short disconnect the model continues without a resync', async () => {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed' });
  const { ably, model, syncs, close } = await orderModel(id);
  try {
    await model.sync();
    await api.update(id, { status: 'paid' });
    await waitFor(() => confirmed(model)?.status === 'paid', 'the first live update');
    await api.disconnectRealtime(2);
    await waitFor(() => ably.connection.state !== 'connected', 'the client to notice the disconnect');
    await api.update(id, { status: 'packed' }); // published while the client is away
    await api.update(id, { status: 'shipped' });
    await waitFor(() => confirmed(model)?.status === 'shipped', 'the missed updates');
    await api.update(id, { status: 'delivered' });
    await waitFor(() => confirmed(model)?.status === 'delivered', 'a live update after reconnecting');
    assert.deepEqual(confirmed(model), (await api.syncOne(id)).data);
    assert.equal(syncs.length, 1, 'sync() was not called again');
  } finally {
    await close();
  }
});

test('after a disconnect of a few seconds the model resumes from history without a resync', async () => {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed', total: 1 });
  const { ably, model, syncs, states, close } = await orderModel(id);
  pauseWhileDisconnected(ably, model);
  try {
    await model.sync();
    await api.update(id, { status: 'paid' });
    await waitFor(() => confirmed(model)?.status === 'paid', 'a live update (the last seen sequenceId)');
    await api.disconnectRealtime(3);
    await waitFor(() => model.state === 'paused', 'the model to pause with the connection');
    await api.update(id, { status: 'packed', total: 2 }); // only in channel history when the model resumes
    await api.update(id, { status: 'shipped' });
    await waitFor(() => confirmed(model)?.status === 'shipped', 'the changes made while away, from history');
    await api.update(id, { status: 'delivered' });
    await waitFor(() => confirmed(model)?.status === 'delivered', 'a live update after resuming');
    assert.deepEqual(confirmed(model), (await api.syncOne(id)).data);
    assert.equal(syncs.length, 1, 'sync() was not called again');
    assert.deepEqual(states.slice(-3), ['ready', 'paused', 'ready']);
  } finally {
    await close();
  }
});

test('an optimistic update is confirmed by the change the backend writes (same mutation id)', async () => {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed' });
  const { model, close } = await orderModel(id);
  try {
    await model.sync();
    const mutationId = uniqueId('mutation');
    const [confirmation] = await model.optimistic(updateEvent(id, { status: 'paid' }, mutationId));
    assert.equal(model.data.optimistic.status, 'paid');
    assert.equal(confirmed(model).status, 'placed');
    await api.update(id, { status: 'paid' }, mutationId);
    await confirmation; // resolved as the confirming event arrives, before it is merged
    await waitFor(() => confirmed(model).status === 'paid', 'the confirmed state');
    assert.deepEqual(confirmed(model), { _id: id, status: 'paid', mutationId });
    assert.deepEqual(model.data.optimistic, confirmed(model));
  } finally {
    await close();
  }
});

test('a rejection (x-ably-models-reject) rolls the optimistic update back', async () => {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed' });
  const { model, close } = await orderModel(id);
  try {
    await model.sync();
    const mutationId = uniqueId('mutation');
    const [confirmation] = await model.optimistic(updateEvent(id, { status: 'cancelled' }, mutationId));
    assert.equal(model.data.optimistic.status, 'cancelled');
    await api.reject(id, mutationId);
    await assert.rejects(confirmation, /rejections/);
    await waitFor(() => model.data.optimistic.status === 'placed', 'the rollback');
    assert.equal(confirmed(model).status, 'placed', 'a rejection is not merged');
  } finally {
    await close();
  }
});

test('with the default orderer, hex ids defeat the history seek and the model resyncs (why livesyncOrderer)', async () => {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed' });
  const history = rest(stack.info).channels.get(`orders:${id}`);
  await waitFor(async () => (await history.history()).items.length === 1, 'the insert in channel history');
  // Two attempts, then the model gives up (instead of retrying with a growing backoff).
  const { model, syncs, close } = await orderModel(id, {
    defaultOrderer: true,
    syncOptions: { retryStrategy: fixedRetryStrategy(50, 2) },
    awaitDetach: true,
  });
  try {
    await assert.rejects(model.sync(), /insufficient history to seek to sequenceId/);
    assert.equal(syncs.length, 2, 'each failed seek led to a new sync()');
  } finally {
    await close();
  }
});

// The same model on the Postgres outbox source: the real connector (`SOURCE=postgres`) on a throwaway
// PostgreSQL, and a backend whose mutations write the state and an outbox row (`data`: the change in the
// MongoDB pipelines' shape, so `mergeDocument` serves both; `mutation_id`: the client's mutationId) in one
// transaction, and whose sync() returns the state with `outbox_sync_sequence_id()` read in the same
// snapshot (helpers/postgres_stack.py). Message ids are the rows' decimal sequence_ids.
describe('the Postgres outbox source (SOURCE=postgres)', () => {
  let pg;
  before(async () => {
    const started = await startPostgresStack();
    pg = { ...started, api: backend(started.info) };
  });
  after(async () => pg?.stop());

  // The SDK seeks back through channel history for a message at or before the sequenceId sync() returned;
  // when every message on the channel is newer, it reports "insufficient history" and calls sync() again.
  // The watermark reaches a row only once the row is published and the connector has stored its position
  // (CHECKPOINT_INTERVAL_MS), so a model created right after its channel's first row would resync once.
  // Wait until sync() covers `sequenceId` (a row on this channel) before creating the model.
  const watermarkReaches = (id, sequenceId) =>
    waitFor(
      async () => livesyncOrderer((await pg.api.syncOne(id)).sequenceId, sequenceId) >= 0,
      `the sync() watermark at ${sequenceId}`,
    );

  // The channel's messages, oldest first, as ably-js reads them from history.
  const channelHistory = async (id) =>
    (await rest(pg.info).channels.get(`orders:${id}`).history({ direction: 'forwards' })).items;

  test('a model converges to the database through inserts, updates and deletes', async () => {
    const id = uniqueId('order');
    const inserted = await pg.api.insert({ _id: id, status: 'placed', total: 5 });
    const paid = await pg.api.update(id, { status: 'paid' }); // history before the model exists
    await watermarkReaches(id, inserted.sequenceId);
    const { model, syncs, close } = await orderModel(id, { on: pg });
    try {
      await model.sync();
      assert.deepEqual(confirmed(model), { _id: id, status: 'paid', total: 5 });
      const packed = await pg.api.update(id, { status: 'packed', total: 6 });
      await waitFor(() => confirmed(model)?.status === 'packed', 'the live update');
      assert.deepEqual(confirmed(model), (await pg.api.syncOne(id)).data);
      const removed = await pg.api.remove(id);
      await waitFor(() => confirmed(model) === null, 'the delete');
      const reinserted = await pg.api.insert({ _id: id, status: 'placed', total: 7 });
      await waitFor(() => confirmed(model)?.total === 7, 'the re-insert');
      assert.deepEqual(confirmed(model), (await pg.api.syncOne(id)).data);
      assert.equal(syncs.length, 1);
      const rows = [inserted, paid, packed, removed, reinserted].map((written) => written.sequenceId);
      const history = await channelHistory(id);
      assert.deepEqual(history.map((message) => message.id), rows, "the message ids are the rows' sequence_ids");
      assert.deepEqual(history.map((message) => message.name), ['insert', 'update', 'update', 'delete', 'insert']);
    } finally {
      await close();
    }
  });

  test('after a disconnect of a few seconds the model resumes from history without a resync', async () => {
    const id = uniqueId('order');
    const inserted = await pg.api.insert({ _id: id, status: 'placed', total: 1 });
    await watermarkReaches(id, inserted.sequenceId);
    const { ably, model, syncs, states, close } = await orderModel(id, { on: pg });
    pauseWhileDisconnected(ably, model);
    try {
      await model.sync();
      await pg.api.update(id, { status: 'paid' });
      await waitFor(() => confirmed(model)?.status === 'paid', 'a live update (the last seen sequenceId)');
      await pg.api.disconnectRealtime(3);
      await waitFor(() => model.state === 'paused', 'the model to pause with the connection');
      await pg.api.update(id, { status: 'packed', total: 2 }); // only in channel history when the model resumes
      await pg.api.update(id, { status: 'shipped' });
      await waitFor(() => confirmed(model)?.status === 'shipped', 'the changes made while away, from history');
      await pg.api.update(id, { status: 'delivered' });
      await waitFor(() => confirmed(model)?.status === 'delivered', 'a live update after resuming');
      assert.deepEqual(confirmed(model), (await pg.api.syncOne(id)).data);
      assert.deepEqual(confirmed(model), { _id: id, status: 'delivered', total: 2 });
      assert.equal(syncs.length, 1, 'sync() was not called again');
      assert.deepEqual(states.slice(-3), ['ready', 'paused', 'ready']);
    } finally {
      await close();
    }
  });

  test('an optimistic update is confirmed by the outbox row carrying its mutation id', async () => {
    const id = uniqueId('order');
    const inserted = await pg.api.insert({ _id: id, status: 'placed' });
    await watermarkReaches(id, inserted.sequenceId);
    const { model, syncs, close } = await orderModel(id, { on: pg });
    try {
      await model.sync();
      const mutationId = uniqueId('mutation');
      const [confirmation] = await model.optimistic(updateEvent(id, { status: 'paid' }, mutationId));
      assert.equal(model.data.optimistic.status, 'paid');
      assert.equal(confirmed(model).status, 'placed');
      const { sequenceId } = await pg.api.update(id, { status: 'paid' }, mutationId);
      await confirmation; // resolved as the confirming event arrives, before it is merged
      await waitFor(() => confirmed(model).status === 'paid', 'the confirmed state');
      assert.deepEqual(confirmed(model), { _id: id, status: 'paid' }); // the mutation id lives in the outbox row only
      assert.deepEqual(model.data.optimistic, confirmed(model));
      const message = (await channelHistory(id)).find((m) => m.id === sequenceId);
      assert.deepEqual(message.extras.headers, { 'x-ably-models-event-uuid': mutationId });
      assert.equal(syncs.length, 1);
    } finally {
      await close();
    }
  });

  test('a rejected outbox row (x-ably-models-reject) rolls the optimistic update back', async () => {
    const id = uniqueId('order');
    const inserted = await pg.api.insert({ _id: id, status: 'placed' });
    await watermarkReaches(id, inserted.sequenceId);
    const { model, close } = await orderModel(id, { on: pg });
    try {
      await model.sync();
      const mutationId = uniqueId('mutation');
      const [confirmation] = await model.optimistic(updateEvent(id, { status: 'cancelled' }, mutationId));
      assert.equal(model.data.optimistic.status, 'cancelled');
      const { sequenceId } = await pg.api.reject(id, mutationId);
      await assert.rejects(confirmation, /rejections/);
      await waitFor(() => model.data.optimistic.status === 'placed', 'the rollback');
      assert.equal(confirmed(model).status, 'placed', 'a rejection is not merged');
      const message = (await channelHistory(id)).find((m) => m.id === sequenceId);
      const headers = { 'x-ably-models-event-uuid': mutationId, 'x-ably-models-reject': 'true' };
      assert.deepEqual(message.extras.headers, headers);
      assert.equal(message.data, undefined, 'a NULL data column sends no data');
    } finally {
      await close();
    }
  });
});
