// Starts `python -m demo.stack` (MongoDB emulator, Ably emulator, connectors, backend) for a test file.
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';

export const ROOT = path.resolve(import.meta.dirname, '../../..');
const PYTHON = process.env.PYTHON ?? path.join(ROOT, '.venv/bin/python');
const START_TIMEOUT_MS = 90_000; // four processes on a loaded 2-core machine
const STOP_TIMEOUT_MS = 30_000;

export async function startStack({ pipelines, connectionStateTtlS } = {}) {
  const args = ['-m', 'demo.stack'];
  for (const pipeline of pipelines ?? ['models-sdk.json', 'models-sdk-collection.json']) {
    args.push('--pipeline', pipeline);
  }
  if (connectionStateTtlS !== undefined) args.push('--connection-state-ttl-s', String(connectionStateTtlS));
  const child = spawn(PYTHON, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  const firstLine = new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    lines.once('line', resolve);
    exited.then((code) => reject(new Error(`demo.stack exited (${code}) before it was ready:\n${stderr}`)));
    setTimeout(() => reject(new Error(`demo.stack not ready in ${START_TIMEOUT_MS} ms:\n${stderr}`)), START_TIMEOUT_MS).unref();
  });
  const info = JSON.parse(await firstLine);
  return {
    info,
    async stop() {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      const status = await exited;
      clearTimeout(timer);
      if (status !== 0) throw new Error(`demo.stack stopped with ${status}:\n${stderr}`);
    },
  };
}
