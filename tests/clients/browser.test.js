// The demo page in Debian's Chromium: a Models SDK model of the orders, live, beside the connector's metrics.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { backend, uniqueId } from './helpers/clients.js';
import { startStack } from './helpers/stack.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const PAGE_TIMEOUT_MS = 30_000; // bounds each wait for the page; never reached when it works
// As root, in a closed network: no sandbox, no GPU, and no background requests (they would be refused).
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const skip = existsSync(CHROMIUM) ? false : `no Chromium at ${CHROMIUM} (apt-get install chromium chromium-driver)`;

let stack;
let browser;
before(async () => {
  if (skip) return;
  stack = await startStack({ pipelines: ['models-sdk-collection.json'] });
  // Playwright gives the browser a fresh user-data-dir of its own.
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});
after(async () => {
  await browser?.close();
  await stack?.stop();
});

test('the page shows changes made in MongoDB as they happen', { skip }, async () => {
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
