// Changes over MAX_MESSAGE_SIZE (64 KiB by default), published truncated (ON_OVERSIZE=truncate): same channel,
// id and name, `x-livesync-truncated: "true"` and `x-livesync-original-size`, without the document bodies
// (MongoDB) or without data (Postgres outbox). ably-js subscribers see the compact message in its place; a
// Models SDK model resyncs (demo/web/merge.js throws TruncatedChangeError, resync-on-truncated.js guards
// the resync) and ends equal to the database. The MongoDB source (demo.stack), then the Postgres outbox
// source (helpers/postgres_stack.py).
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';

import { livesyncOrderer } from '../../demo/web/livesync-orderer.js';
import { isTruncated, mergeDocument, mergeList, TruncatedChangeError } from '../../demo/web/merge.js';
import { resyncOnTruncated } from '../../demo/web/resync-on-truncated.js';
import { backend, modelsClient, realtime, rest, uniqueId, waitFor } from './helpers/clients.js';
import { startPostgresStack, startStack } from './helpers/stack.js';

const MAX_MESSAGE_SIZE = 65_536; // the connector's default
const TRUNCATION_HEADERS = ['x-livesync-truncated', 'x-livesync-original-size'];
const BODY_FIELDS = ['fullDocument', 'fullDocumentBeforeChange', 'updateDescription'];

// A field that alone makes the change's message larger than MAX_MESSAGE_SIZE.
const largeText = () => `${uniqueId('large')} ${'0123456789abcdef'.repeat(4_500)}`; // about 72 KB

// Every rejection nobody handled, while this file runs: the SDK's resync must leave none.
const unhandled = [];
process.on('unhandledRejection', (reason) => unhandled.push(reason));
afterEach(() => assert.deepEqual(unhandled.splice(0).map(String), [], 'no unhandled rejection'));

const confirmed = (model) => model.data.confirmed;

// A model whose sync and merge go through resyncOnTruncated. `sdkSyncs` counts the SDK's sync() calls,
// `syncs` the backend's answers (the guard may ask again until the answer covers the truncated change),
// `changes` the model's state changes (with their reasons).
async function guardedModel(on, channelName, syncFn, merge) {
  const ably = realtime(on.info);
  const syncs = [];
  const changes = [];
  let sdkSyncs = 0;
  const guarded = resyncOnTruncated({
    ably,
    channelName,
    merge,
    sync: async () => {
      const result = await syncFn();
      syncs.push(result);
      return result;
    },
  });
  const model = modelsClient(ably).models.get({
    channelName,
    merge: guarded.merge,
    sync: async () => {
      sdkSyncs += 1;
      return guarded.sync();
    },
  });
  model.on((change) => changes.push(change));
  return {
    model,
    syncs,
    changes,
    sdkSyncs: () => sdkSyncs,
    // Settled: ready, the last sync() answer at or after `truncatedId` (the last truncated change: no replay
    // can bring it back), and the state is the database's.
    settled: async (truncatedId, expected) => {
      let database;
      try {
        await waitFor(async () => {
          database = await expected();
          if (model.state !== 'ready' || syncs.length === 0) return false;
          if (livesyncOrderer(String(syncs.at(-1).sequenceId), truncatedId) < 0) return false;
          return JSON.stringify(confirmed(model)) === JSON.stringify(database);
        }, `the model settled after ${truncatedId}`);
      } catch (error) {
        const brief = (value) => JSON.stringify(value, (k, v) => (typeof v === 'string' && v.length > 40 ? `${v.slice(0, 40)}…` : v));
        const seen = changes.map((change) => `${change.current}${change.reason ? ` (${change.reason.message})` : ''}`);
        error.message += `: model ${model.state}, channel ${ably.channels.all[channelName]?.state}, ${sdkSyncs} sync() calls, `;
        error.message += `answers at ${brief(syncs.map((result) => result.sequenceId))}, states ${brief(seen)}, `;
        error.message += `confirmed ${brief(confirmed(model))}, database ${brief(database)}`;
        throw error;
      }
    },
    close: () => model.dispose().finally(() => ably.close()),
  };
}

function resyncReasons(changes) {
  return changes.filter((change) => change.current === 'syncing' && change.reason).map((change) => change.reason);
}

async function subscribe(client, name) {
  const received = [];
  await client.channels.get(name).subscribe((message) => received.push(message));
  return received;
}

const channelHistory = async (info, name) =>
  (await rest(info).channels.get(name).history({ direction: 'forwards' })).items;

// -- the merge functions alone ----------------------------------------------------------------------

const truncatedHeaders = (uuid) => ({
  'x-ably-models-event-uuid': uuid,
  'x-livesync-truncated': 'true',
  'x-livesync-original-size': '70123',
});

test('mergeDocument and mergeList throw TruncatedChangeError on a truncated change, from either source', () => {
  const mongo = {
    id: '826B0E06340000000100',
    sequenceId: '826B0E06340000000100',
    name: 'update',
    confirmed: true,
    mutationId: 'm-1',
    extras: { headers: truncatedHeaders('m-1') },
    data: { _id: { _data: '826B0E06340000000100' }, operationType: 'update', documentKey: { _id: 'a' } },
  };
  const outbox = { id: '42', sequenceId: '42', name: 'update', confirmed: true, mutationId: 'm-2', extras: { headers: truncatedHeaders('m-2') } };
  for (const event of [mongo, outbox]) {
    assert.ok(isTruncated(event));
    for (const merge of [mergeDocument, mergeList]) {
      assert.throws(
        () => merge(merge === mergeList ? [{ _id: 'a', status: 'placed' }] : { _id: 'a', status: 'placed' }, event),
        (error) =>
          error instanceof TruncatedChangeError &&
          error.sequenceId === event.sequenceId &&
          error.originalSize === 70123 &&
          /truncated/.test(error.message),
      );
    }
  }
  assert.deepEqual(new TruncatedChangeError(mongo).documentKey, { _id: 'a' });
  assert.equal(new TruncatedChangeError(outbox).documentKey, undefined);
  // Anything else merges as before.
  const update = { ...mongo, extras: { headers: { 'x-ably-models-event-uuid': 'm-1' } } };
  update.data = { ...mongo.data, updateDescription: { updatedFields: { status: 'paid' }, removedFields: [] } };
  assert.equal(isTruncated(update), false);
  assert.deepEqual(mergeDocument({ _id: 'a', status: 'placed' }, update), { _id: 'a', status: 'paid' });
  assert.deepEqual(mergeList([{ _id: 'a', status: 'placed' }], update), [{ _id: 'a', status: 'paid' }]);
  const optimistic = { mutationId: 'm-3', name: 'update', confirmed: false, data: update.data };
  assert.deepEqual(mergeDocument({ _id: 'a' }, optimistic), { _id: 'a', status: 'paid' });
});

// -- the MongoDB source -------------------------------------------------------------------------------

describe('the MongoDB source (demo.stack)', () => {
  let stack;
  let api;
  before(async () => {
    stack = await startStack({ pipelines: ['models-sdk.json', 'models-sdk-collection.json'] });
    api = backend(stack.info);
  });
  after(async () => stack?.stop());

  test('ably-js: the truncated change arrives in order between its neighbours, same id, no document bodies', async () => {
    const id = uniqueId('order');
    const notes = largeText();
    const client = realtime(stack.info);
    try {
      const received = await subscribe(client, `orders:${id}`);
      await api.insert({ _id: id, status: 'placed', mutationId: 'm-insert' });
      await api.update(id, { notes }, 'm-large'); // its updateDescription and fullDocument: over 64 KiB
      await api.update(id, { notes: 'short' }, 'm-short'); // the document is small again: published whole
      await waitFor(() => received.length === 3, 'three messages');

      assert.deepEqual(received.map((m) => m.name), ['insert', 'update', 'update']);
      const ids = received.map((m) => m.id);
      assert.deepEqual([...ids].sort(livesyncOrderer), ids, 'ids in stream order');
      for (const message of received) {
        assert.equal(typeof message.data, 'object');
        assert.equal(message.id, message.data._id._data, "the id is the event's resume token, truncated or not");
        assert.deepEqual(message.data.documentKey, { _id: id });
      }
      const [before, truncated, afterwards] = received;

      const headers = truncated.extras.headers;
      assert.deepEqual(Object.keys(headers).sort(), ['x-ably-models-event-uuid', ...TRUNCATION_HEADERS].sort());
      assert.equal(headers['x-ably-models-event-uuid'], 'm-large', 'the pipeline-set header is kept');
      assert.equal(headers['x-livesync-truncated'], 'true');
      assert.ok(Number(headers['x-livesync-original-size']) > Math.max(MAX_MESSAGE_SIZE, notes.length));
      for (const field of BODY_FIELDS) assert.equal(field in truncated.data, false, `no ${field}`);
      assert.equal(truncated.data.operationType, 'update');
      assert.deepEqual(truncated.data.ns, before.data.ns);

      assert.deepEqual(before.data.fullDocument, { _id: id, status: 'placed', mutationId: 'm-insert' });
      assert.deepEqual(afterwards.data.updateDescription.updatedFields, { notes: 'short', mutationId: 'm-short' });
      assert.deepEqual(afterwards.data.fullDocument, { _id: id, status: 'placed', mutationId: 'm-short', notes: 'short' });
      for (const neighbour of [before, afterwards]) {
        assert.deepEqual(Object.keys(neighbour.extras.headers), ['x-ably-models-event-uuid']);
      }
      const history = await channelHistory(stack.info, `orders:${id}`);
      assert.deepEqual(history.map((m) => m.id), ids, 'history holds the same three');
      assert.deepEqual(history[1].extras.headers, headers);
    } finally {
      client.close();
    }
  });

  test('Models SDK: a document model resyncs on a truncated change and ends equal to the database', async () => {
    const id = uniqueId('order');
    await api.insert({ _id: id, status: 'placed', total: 5 });
    const m = await guardedModel(stack, `orders:${id}`, () => api.syncOne(id), mergeDocument);
    try {
      await m.model.sync();
      assert.deepEqual(confirmed(m.model), { _id: id, status: 'placed', total: 5 });
      const notes = largeText();
      await api.update(id, { notes }); // truncated
      // FULL_DOCUMENT=updateLookup: the next change's fullDocument carries the large notes, so it is
      // truncated too (every change of a document over the limit is; each costs the model a resync).
      await api.update(id, { status: 'paid' });
      const history = await waitFor(async () => {
        const items = await channelHistory(stack.info, `orders:${id}`);
        return items.length === 3 && items;
      }, 'the three changes in history');
      assert.deepEqual(history.map((message) => isTruncated(message)), [false, true, true]);
      const database = () => api.syncOne(id).then((result) => result.data);
      await m.settled(history[2].id, database);
      assert.deepEqual(confirmed(m.model), { _id: id, status: 'paid', total: 5, notes }, 'the notes, from sync()');
      assert.ok(m.sdkSyncs() >= 2, `sync() was called again (${m.sdkSyncs()} calls)`);
      const reasons = resyncReasons(m.changes);
      assert.ok(reasons.length >= 1 && reasons.every((reason) => reason instanceof TruncatedChangeError));
      assert.ok(history.some((message) => message.id === reasons[0].sequenceId), 'the reason names the change');
      assert.equal(m.model.state, 'ready');
      assert.equal(m.changes.some((change) => change.current === 'errored'), false);

      // The document small again: merged as usual, no resync.
      const syncsBefore = m.sdkSyncs();
      await api.update(id, { notes: 'short', status: 'packed' });
      await waitFor(() => confirmed(m.model)?.status === 'packed', 'the small change');
      assert.deepEqual(confirmed(m.model), await database());
      assert.equal(m.sdkSyncs(), syncsBefore, 'no resync for a whole change');
    } finally {
      await m.close();
    }
  });

  test('Models SDK: a truncated insert (no fullDocument to merge) resyncs too, never leaves the state undefined', async () => {
    const id = uniqueId('order');
    const m = await guardedModel(stack, `orders:${id}`, () => api.syncOne(id), mergeDocument);
    try {
      await m.model.sync();
      assert.equal(confirmed(m.model), null);
      const notes = largeText();
      await api.insert({ _id: id, status: 'placed', notes });
      const [insert] = await waitFor(async () => {
        const items = await channelHistory(stack.info, `orders:${id}`);
        return items.length === 1 && items;
      }, 'the insert in history');
      assert.ok(isTruncated(insert));
      await m.settled(insert.id, () => api.syncOne(id).then((result) => result.data));
      assert.deepEqual(confirmed(m.model), { _id: id, status: 'placed', notes });
      assert.equal(m.sdkSyncs(), 2);
    } finally {
      await m.close();
    }
  });

  test('Models SDK: a collection model (mergeList) resyncs the list on a truncated change', async () => {
    const mine = (list) => (list ?? []).filter((order) => order._id.startsWith(prefix));
    const prefix = uniqueId('list');
    const [a, b] = [`${prefix}-a`, `${prefix}-b`];
    await api.insert({ _id: a, status: 'placed' });
    const m = await guardedModel(stack, 'orders', () => api.syncAll(), mergeList);
    try {
      await m.model.sync();
      assert.deepEqual(mine(confirmed(m.model)), [{ _id: a, status: 'placed' }]);
      await api.insert({ _id: b, status: 'placed' });
      await waitFor(() => mine(confirmed(m.model)).length === 2, 'the live insert');
      const notes = largeText();
      await api.update(a, { notes }); // truncated
      await api.update(b, { status: 'paid' }); // whole
      const database = async () => (await api.syncAll()).data;
      const history = await waitFor(async () => {
        const items = (await channelHistory(stack.info, 'orders')).filter((msg) => msg.data?.documentKey?._id.startsWith(prefix));
        return items.length === 4 && items;
      }, 'the four changes in history');
      assert.deepEqual(history.map((message) => isTruncated(message)), [false, false, true, false]);
      await m.settled(history[2].id, database);
      assert.deepEqual(mine(confirmed(m.model)), [
        { _id: a, status: 'placed', notes },
        { _id: b, status: 'paid' },
      ]);
      assert.ok(m.sdkSyncs() >= 2, 'sync() was called again');
      assert.ok(resyncReasons(m.changes).every((reason) => reason instanceof TruncatedChangeError));
    } finally {
      await m.close();
    }
  });
});

// -- the Postgres outbox source -------------------------------------------------------------------

describe('the Postgres outbox source (SOURCE=postgres)', () => {
  let pg;
  before(async () => {
    const started = await startPostgresStack();
    pg = { ...started, api: backend(started.info) };
  });
  after(async () => pg?.stop());

  // See models.test.js: create a model only once sync() covers its channel's first row.
  const watermarkReaches = (id, sequenceId) =>
    waitFor(
      async () => livesyncOrderer((await pg.api.syncOne(id)).sequenceId, sequenceId) >= 0,
      `the sync() watermark at ${sequenceId}`,
    );

  test('ably-js: the truncated row arrives in order, its sequence_id as id, headers but no data', async () => {
    const id = uniqueId('order');
    const notes = largeText();
    const client = realtime(pg.info);
    try {
      const received = await subscribe(client, `orders:${id}`);
      const rows = [
        await pg.api.insert({ _id: id, status: 'placed', mutationId: 'm-insert' }),
        await pg.api.update(id, { notes }, 'm-large'), // the row's data: over 64 KiB
        await pg.api.update(id, { status: 'paid' }, 'm-paid'),
      ].map((written) => written.sequenceId);
      await waitFor(() => received.length === 3, 'three messages');

      assert.deepEqual(received.map((m) => m.id), rows, "the ids are the rows' sequence_ids");
      assert.deepEqual(received.map((m) => m.name), ['insert', 'update', 'update']);
      const [before, truncated, afterwards] = received;
      assert.equal(truncated.data, undefined, 'published without data');
      const headers = truncated.extras.headers;
      assert.deepEqual(Object.keys(headers).sort(), ['x-ably-models-event-uuid', ...TRUNCATION_HEADERS].sort());
      assert.equal(headers['x-ably-models-event-uuid'], 'm-large');
      assert.equal(headers['x-livesync-truncated'], 'true');
      assert.ok(Number(headers['x-livesync-original-size']) > Math.max(MAX_MESSAGE_SIZE, notes.length));
      assert.deepEqual(before.data.fullDocument, { _id: id, status: 'placed' });
      assert.deepEqual(afterwards.data.updateDescription.updatedFields, { status: 'paid' });
      assert.deepEqual(before.extras.headers, { 'x-ably-models-event-uuid': 'm-insert' });
      assert.deepEqual(afterwards.extras.headers, { 'x-ably-models-event-uuid': 'm-paid' });
      const history = await channelHistory(pg.info, `orders:${id}`);
      assert.deepEqual(history.map((m) => m.id), rows);
      assert.deepEqual(history[1].extras.headers, headers);
    } finally {
      client.close();
    }
  });

  test('Models SDK: a model resyncs on a truncated row and ends equal to the database', async () => {
    const id = uniqueId('order');
    const inserted = await pg.api.insert({ _id: id, status: 'placed', total: 5 });
    await watermarkReaches(id, inserted.sequenceId);
    const m = await guardedModel(pg, `orders:${id}`, () => pg.api.syncOne(id), mergeDocument);
    try {
      await m.model.sync();
      assert.deepEqual(confirmed(m.model), { _id: id, status: 'placed', total: 5 });
      const notes = largeText();
      const large = await pg.api.update(id, { notes }); // truncated
      await pg.api.update(id, { status: 'paid' }); // whole: only the field set is in the row
      const database = () => pg.api.syncOne(id).then((result) => result.data);
      await m.settled(large.sequenceId, database);
      assert.deepEqual(confirmed(m.model), { _id: id, status: 'paid', total: 5, notes }, 'the notes, from sync()');
      assert.ok(m.sdkSyncs() >= 2, `sync() was called again (${m.sdkSyncs()} calls)`);
      const reasons = resyncReasons(m.changes);
      assert.ok(reasons.length >= 1 && reasons.every((reason) => reason instanceof TruncatedChangeError));
      assert.equal(reasons[0].sequenceId, large.sequenceId);
      // The guard asked again until the watermark covered the truncated row: the SDK resynced only once.
      assert.equal(m.sdkSyncs(), 2);
      assert.ok(m.syncs.slice(1).some((result) => livesyncOrderer(result.sequenceId, large.sequenceId) >= 0));
      assert.equal(m.changes.some((change) => change.current === 'errored'), false);
    } finally {
      await m.close();
    }
  });
});
