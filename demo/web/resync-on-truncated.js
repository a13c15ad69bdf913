// Wraps a Models SDK 0.0.4 model's sync() and merge() so that the resync a truncated change causes
// (merge.js: TruncatedChangeError) ends with the model equal to the database, with no unhandled rejection:
//
//   models.models.get({ channelName, ...resyncOnTruncated({ ably, channelName, sync, merge: mergeDocument }) })
//
// - sync() first lets the SDK finish detaching the model's channel. On a resync the SDK (Model.removeStream)
//   disposes its stream without awaiting the detach, then calls sync() and re-attaches. If sync() answers
//   before the detach is done, the attach supersedes it and the SDK leaves that rejection unhandled; if the
//   detach ends while the new stream starts, the old stream's dispose() drops the model's subscription.
// - sync() is called again (after `retryMs`, for at most `maxWaitMs`) until its sequenceId reaches the
//   truncated change. A backend's sequenceId may lag behind what is already published (the Postgres
//   outbox watermark is stored every CHECKPOINT_INTERVAL_MS): the SDK would replay the truncated change,
//   the merge would throw again, and the model resync once more. Past `maxWaitMs` the answer is returned
//   as it is, and that is what happens.
import { livesyncOrderer } from './livesync-orderer.js';
import { TruncatedChangeError } from './merge.js';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function detachSettled(ably, channelName) {
  const channel = ably.channels.all?.[channelName];
  if (channel?.state === 'detaching') await new Promise((resolve) => channel.once(resolve));
  await sleep(0); // the SDK's dispose() goes on (release, a fresh subject) once the detach has resolved
}

export function resyncOnTruncated({
  ably,
  channelName,
  sync,
  merge,
  orderer = livesyncOrderer,
  retryMs = 100,
  maxWaitMs = 10_000,
}) {
  let truncatedAt = null; // the newest truncated change the merge has seen and sync() not yet covered

  function guardedMerge(state, event) {
    try {
      return merge(state, event);
    } catch (error) {
      if (error instanceof TruncatedChangeError) {
        const id = String(error.sequenceId);
        if (truncatedAt === null || orderer(id, truncatedAt) > 0) truncatedAt = id;
      }
      throw error;
    }
  }

  async function guardedSync(...params) {
    await detachSettled(ably, channelName);
    const deadline = Date.now() + maxWaitMs;
    for (;;) {
      const target = truncatedAt;
      const result = await sync(...params);
      const covered = target === null || orderer(String(result.sequenceId), target) >= 0;
      if (covered && truncatedAt === target) truncatedAt = null;
      if (covered || Date.now() >= deadline) return result;
      await sleep(retryMs);
    }
  }

  return { sync: guardedSync, merge: guardedMerge };
}
