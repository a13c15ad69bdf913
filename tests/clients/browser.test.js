// The demo page in a real headless Chromium: a Models SDK model of the orders, live, beside the connector's
// metrics. The browser is the npm dev dependency @sparticuz/chromium (a headless shell shipped inside the
// package, unpacked to the temp directory on first use: no download, no system package); CHROMIUM=/path
// selects another one (e.g. Debian's /usr/bin/chromium).
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { launchBrowser, openDemoPage, placeThenShip } from './helpers/browser.js';
import { backend } from './helpers/clients.js';
import { startStack } from './helpers/stack.js';

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
  const { page, problems } = await openDemoPage(browser, stack.info);
  const { id, row } = await placeThenShip(page, api);
  await page.waitForFunction(() => Number(document.getElementById('messagesPublished').textContent) >= 2);

  const screenshot = path.join(mkdtempSync(path.join(tmpdir(), 'livesync-browser-')), 'demo-page.png');
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);

  await api.remove(id);
  await row.waitFor({ state: 'detached' });
  assert.deepEqual(problems, []);
});
