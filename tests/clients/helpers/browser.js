// A headless Chromium for page tests, launched as tests/clients/browser.test.js launches it: the npm dev
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

export async function launchBrowser() {
  if (process.env.CHROMIUM) {
    return chromium.launch({ executablePath: process.env.CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  }
  const packaged = packagedChromium.args.filter((arg) => !LAMBDA_ONLY_ARGS.has(arg));
  return chromium.launch({
    executablePath: await packagedChromium.executablePath(),
    args: [...new Set([...packaged, ...CHROMIUM_ARGS])],
    headless: true,
  });
}
