// The snippets in the READMEs are the code these tests run.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { MongoClient } from 'mongodb';

import { livesyncOrderer } from '../../demo/web/livesync-orderer.js';
import { uniqueId, waitFor } from './helpers/clients.js';
import { syncOrder } from './helpers/sync-snippet.js';
import { ROOT, startStack } from './helpers/stack.js';

const read = (file) => readFileSync(path.join(ROOT, file), 'utf8');
const snippet = (file) => read(file).replace(/^export /m, '').trim();

test('README.md and pipelines/README.md show livesyncOrderer exactly as tested', () => {
  const code = snippet('demo/web/livesync-orderer.js');
  assert.ok(read('README.md').includes(code), 'README.md');
  assert.ok(read('pipelines/README.md').includes(code), 'pipelines/README.md');
});

test('README.md shows the sync() snippet exactly as tested', () => {
  assert.ok(read('README.md').includes(snippet('tests/clients/helpers/sync-snippet.js')));
});

test('livesyncOrderer: resume tokens as text, decimal ids as exact numbers', () => {
  const tokens = ['826B0E06340000000100', '826B0E06340000000200', '826B0E0634000000020046', '826B0F00000000000100'];
  assert.deepEqual([...tokens].reverse().sort(livesyncOrderer), tokens);
  const decimals = ['9', '10', '9007199254740993', '9007199254740994', '18014398509481984'];
  assert.deepEqual([...decimals].reverse().sort(livesyncOrderer), decimals);
  assert.equal(Number('9007199254740993') - Number('9007199254740992'), 0, 'Number() cannot tell these apart');
  assert.equal(livesyncOrderer('9007199254740993', '9007199254740992'), 1);
  assert.equal(livesyncOrderer(0, '0'), 0);
});

let stack;
before(async () => {
  stack = await startStack({ pipelines: [] });
});
after(async () => stack?.stop());

test('the Node sync() snippet returns a sequenceId that sorts between earlier and later changes', async () => {
  const client = new MongoClient(stack.info.mongodb);
  try {
    const orders = client.db(stack.info.database).collection(stack.info.collection);
    const id = uniqueId('order');
    const watcher = orders.watch([], { maxAwaitTimeMS: 100 });
    await watcher.tryNext();
    await orders.insertOne({ _id: id, status: 'placed' });
    const { sequenceId, data } = await syncOrder(orders, id);
    await orders.updateOne({ _id: id }, { $set: { status: 'paid' } });
    const seen = [];
    await waitFor(async () => {
      const event = await watcher.tryNext();
      if (event) seen.push(event._id._data);
      return seen.length === 2;
    }, 'both change events');
    await watcher.close();
    assert.deepEqual(data, { _id: id, status: 'placed' });
    assert.equal(livesyncOrderer(seen[0], sequenceId) <= 0, true, 'the insert is at or before it');
    assert.equal(livesyncOrderer(seen[1], sequenceId), 1, 'the update is after it');
  } finally {
    await client.close();
  }
});
