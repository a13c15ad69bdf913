// A headless Chromium for the page tests (browser.test.js, encryption.test.js): the npm dev
// dependency @sparticuz/chromium (a headless shell inside the package: no download, no system package), or
// CHROMIUM=/path (e.g. Debian's /usr/bin/chromium).
import packagedChromium from '@sparticuz/chromium';
import assert from 'node:assert/strict';

import { chromium } from 'playwright-core';

import { uniqueId } from './clients.js';

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
// @sparticuz/chromium's own flags are for AWS Lambda; these would hide what page tests are for (CORS
// against the emulators, one process per page as in a user's browser).
const LAMBDA_ONLY_ARGS = new Set(['--disable-web-security', '--allow-running-insecure-content', '--single-process']);

// Where the browser is and its flags (the page tests log the path).
export async function browserOptions() {
  if (process.env.CHROMIUM) return { executablePath: process.env.CHROMIUM, args: CHROMIUM_ARGS };
  const packaged = packagedChromium.args.filter((arg) => !LAMBDA_ONLY_ARGS.has(arg));
  return {
    executablePath: await packagedChromium.executablePath(),
    args: [...new Set([...packaged, ...CHROMIUM_ARGS])],
  };
}

// Playwright gives the browser a fresh user-data-dir of its own.
export async function launchBrowser() {
  const options = await browserOptions();
  console.log(`browser: ${options.executablePath}`);
  return chromium.launch({ ...options, headless: true });
}

// The demo page, open and its model ready; `watch(page)` runs before it loads (to count requests).
// `problems` collects the page's uncaught errors.
export async function openDemoPage(browser, info, watch = () => {}) {
  const page = await browser.newPage();
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  const problems = [];
  page.on('pageerror', (err) => problems.push(err.message));
  watch(page);
  await page.goto(`${info.backend}/`);
  await page.getByText('model ready').waitFor();
  return { page, problems };
}

// An order placed then shipped through the demo backend, seen on the page row by row; its id and row.
export async function placeThenShip(page, api) {
  const id = uniqueId('order');
  await api.insert({ _id: id, status: 'placed', total: 42 });
  const row = page.locator(`tr[data-id="${id}"]`);
  await row.getByText('placed').waitFor();
  await api.update(id, { status: 'shipped' });
  await row.getByText('shipped').waitFor();
  assert.deepEqual(await row.locator('td').allTextContents(), [id, 'shipped', '42']);
  return { id, row };
}
