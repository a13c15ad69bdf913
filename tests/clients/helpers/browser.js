// A headless Chromium for the page tests (browser.test.js, encryption.test.js): the npm dev
// dependency @sparticuz/chromium (a headless shell inside the package: no download, no system package), or
// CHROMIUM=/path (e.g. Debian's /usr/bin/chromium).
import packagedChromium from '@sparticuz/chromium';
import { chromium } from 'playwright-core';

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
