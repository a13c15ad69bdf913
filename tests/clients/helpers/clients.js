// The real SDKs pointed at the emulators, the backend's API, and bounded waiting.
import * as Ably from 'ably';
import Models from '@ably-labs/models';
import { randomUUID } from 'node:crypto';

import { livesyncOrderer } from '../../../demo/web/livesync-orderer.js';

// Node loads the package's CommonJS build, whose default export sits under `.default`.
const ModelsClient = Models.default ?? Models;
const WAIT_TIMEOUT_MS = 20_000; // bounds a wait for something the test caused; never reached when it works

export function ablyOptions(info) {
  const url = new URL(info.ably);
  return {
    key: info.ablyKey,
    endpoint: url.hostname,
    port: Number(url.port),
    tls: false,
    useBinaryProtocol: false, // the emulator speaks JSON
    transports: ['web_socket'],
    disconnectedRetryTimeout: 200,
    suspendedRetryTimeout: 200,
    logLevel: 0,
  };
}

export function realtime(info) {
  return new Ably.Realtime(ablyOptions(info));
}

export function rest(info) {
  return new Ably.Rest(ablyOptions(info));
}

export const { fixedRetryStrategy } = Models;

export function modelsClient(ably, { defaultOrderer = false, syncOptions = {} } = {}) {
  return new ModelsClient({
    ably,
    syncOptions,
    eventBufferOptions: defaultOrderer ? {} : { eventOrderer: livesyncOrderer },
  });
}

export async function waitFor(check, what, timeoutMs = WAIT_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

export function uniqueId(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

// The application backend (demo/backend.py): sync() and mutations.
export function backend(info) {
  async function call(method, path, body) {
    const response = await fetch(`${info.backend}${path}`, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
    return response.json();
  }
  return {
    syncOne: (id) => call('GET', `/api/orders/${id}`),
    syncAll: () => call('GET', '/api/orders'),
    insert: (order) => call('POST', '/api/orders', order),
    update: (id, set, mutationId) => call('PATCH', `/api/orders/${id}`, { set, mutationId }),
    reject: (id, mutationId) => call('POST', `/api/orders/${id}/reject`, { mutationId }),
    remove: (id) => call('DELETE', `/api/orders/${id}`),
    disconnectRealtime: async (seconds) => {
      const response = await fetch(`${info.ably}/_emulator/faults`, {
        method: 'POST',
        body: JSON.stringify({ mode: 'disconnect', duration_s: seconds }),
      });
      if (!response.ok) throw new Error(`disconnect fault: ${response.status}`);
    },
  };
}
