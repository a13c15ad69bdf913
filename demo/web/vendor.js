// The two SDKs the page uses, bundled for the browser by demo/stack.py (esbuild, from node_modules).
export * as Ably from 'ably';
export { default as ModelsClient } from '@ably-labs/models';
