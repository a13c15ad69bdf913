// The demo page in a real headless Chromium: a Models SDK model of the orders, live, beside the connector's
// metrics. The browser is the npm dev dependency @sparticuz/chromium (a headless shell shipped inside the
// package, unpacked to the temp directory on first use: no download, no system package); CHROMIUM=/path
// selects another one (e.g. Debian's /usr/bin/chromium).
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { launchBrowser } from './helpers/browser.js';
import { backend, uniqueId } from './helpers/clients.js';
import { startStack } from './helpers/stack.js';

const PAGE_TIMEOUT_MS = 30_000; // bounds each wait for the page; never reached when it works

let stack;
let browser;
before(async () => {
  stack = await startStack({ pipelines: ['models-sdk-collection.json'] });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await stack?.stop();
});

test('the page shows changes made in MongoDB as they happen', async () => {
  assert.equal(stack.info.pageProblem, null);
  const api = backend(stack.info);
  const page = await browser.newPage();
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  const problems = [];
  page.on('pageerror', (err) => problems.push(err.message));
  await page.goto(`${stack.info.backend}/`);
  await page.getByText('model ready').waitFor();

  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed', total: 42 });
  const row = page.locator(`tr[data-id="${id}"]`);
  await row.getByText('placed').waitFor();
  await api.update(id, { status: 'shipped' });
  await row.getByText('shipped').waitFor();
  assert.deepEqual(await row.locator('td').allTextContents(), [id, 'shipped', '42']);
  await page.waitForFunction(() => Number(document.getElementById('messagesPublished').textContent) >= 2);

  const screenshot = path.join(mkdtempSync(path.join(tmpdir(), 'livesync-browser-')), 'demo-page.png');
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);

  await api.remove(id);
  await row.waitFor({ state: 'detached' });
  assert.deepEqual(problems, []);
});
