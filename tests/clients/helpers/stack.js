// Starts the LiveSync chain for a test file: `python -m demo.stack` (MongoDB emulator, Ably emulator,
// connectors, backend) or `python -m tests.clients.helpers.postgres_stack` (a throwaway PostgreSQL, the
// Ably emulator, the connector with SOURCE=postgres, an outbox backend). Both print one JSON line when
// ready and stop everything they started on SIGTERM.
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

export const ROOT = path.resolve(import.meta.dirname, '../../..');
const PYTHON = process.env.PYTHON ?? path.join(ROOT, '.venv/bin/python');
const START_TIMEOUT_MS = 90_000; // four processes on a loaded 2-core machine
const STOP_TIMEOUT_MS = 30_000;

// `cipherKey` (base64): the connectors encrypt every channel with it (CHANNEL_CIPHER_KEY).
export async function startStack({ pipelines, connectionStateTtlS, cipherKey } = {}) {
  const args = ['-m', 'demo.stack'];
  for (const pipeline of pipelines ?? ['models-sdk.json', 'models-sdk-collection.json']) {
    args.push('--pipeline', pipeline);
  }
  if (connectionStateTtlS !== undefined) args.push('--connection-state-ttl-s', String(connectionStateTtlS));
  if (cipherKey !== undefined) args.push('--cipher-key', cipherKey);
  return startPython('demo.stack', args);
}

// PostgreSQL 15 from Debian's package (tests/postgres/server.py), removed when the stack stops. The
// helper also stops by itself when its stdin closes, so a test process that dies leaves no cluster behind.
export async function startPostgresStack() {
  return startPython('postgres_stack', ['-m', 'tests.clients.helpers.postgres_stack']);
}

async function startPython(name, args) {
  const child = spawn(PYTHON, args, { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  async function stop() {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    const status = await exited;
    clearTimeout(timer);
    child.stdin.destroy();
    return status;
  }
  let timer;
  const firstLine = new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    lines.once('line', resolve);
    exited.then((code) => reject(new Error(`${name} exited (${code}) before it was ready:\n${stderr}`)));
    timer = setTimeout(() => reject(new Error(`${name} not ready in ${START_TIMEOUT_MS} ms:\n${stderr}`)), START_TIMEOUT_MS);
  });
  let info;
  try {
    info = JSON.parse(await firstLine);
  } catch (error) {
    await stop(); // whatever it had started, it stops
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return {
    info,
    async stop() {
      const status = await stop();
      if (status !== 0) throw new Error(`${name} stopped with ${status}:\n${stderr}`);
    },
  };
}
