// Models SDK merge functions for the connector's change events (`event.data` is the change event).
// They apply values, not deltas, so replaying an event the state already reflects changes nothing.
//
// A change too large for one Ably message arrives truncated (ON_OVERSIZE=truncate): same channel, id and
// name, header `x-livesync-truncated: "true"`, and without the document bodies (MongoDB: no
// `fullDocument`, `fullDocumentBeforeChange`, `updateDescription`; Postgres outbox: no `data` at all).
// Nothing in it says what the record now is, so the merge throws a TruncatedChangeError: the Models SDK
// (0.0.4) treats a merge that throws on a confirmed event as a stream error and resyncs the model (calls
// sync() again, replays history after its sequenceId). Wrap the model's sync and merge with
// resyncOnTruncated() (resync-on-truncated.js), so that this resync ends equal to the database without an
// unhandled rejection.

export const TRUNCATED_HEADER = 'x-livesync-truncated';
export const ORIGINAL_SIZE_HEADER = 'x-livesync-original-size';

export function isTruncated(event) {
  return event?.extras?.headers?.[TRUNCATED_HEADER] === 'true';
}

// What a merge throws for a truncated change; `sequenceId` is the message id (the change's position).
export class TruncatedChangeError extends Error {
  constructor(event) {
    const size = event.extras.headers[ORIGINAL_SIZE_HEADER];
    const sequenceId = event.sequenceId ?? event.id;
    super(`change ${sequenceId} (${event.name}) was published truncated (${size} bytes): the model must resync`);
    this.name = 'TruncatedChangeError';
    this.sequenceId = sequenceId;
    this.originalSize = Number(size);
    this.documentKey = event.data?.documentKey; // MongoDB only: an outbox row arrives without data
  }
}

function applyUpdate(doc, description) {
  const next = { ...doc, ...description.updatedFields };
  for (const field of description.removedFields ?? []) delete next[field];
  return next;
}

// A model of one document (channel `<collection>:<_id>`, pipelines/models-sdk.json): the document or null.
export function mergeDocument(state, event) {
  if (isTruncated(event)) throw new TruncatedChangeError(event);
  const change = event.data;
  switch (change.operationType) {
    case 'insert':
    case 'replace':
      return change.fullDocument;
    case 'update':
      return state ? applyUpdate(state, change.updateDescription) : state;
    case 'delete':
      return null;
    default:
      return state;
  }
}

// A model of a whole collection (channel `<collection>`, pipelines/models-sdk-collection.json): documents by _id.
export function mergeList(state, event) {
  if (isTruncated(event)) throw new TruncatedChangeError(event); // the whole list resyncs
  const change = event.data;
  const id = JSON.stringify(change.documentKey._id);
  const others = state.filter((doc) => JSON.stringify(doc._id) !== id);
  const current = state.find((doc) => JSON.stringify(doc._id) === id);
  const merged = mergeDocument(current ?? null, event);
  const next = merged ? [...others, merged] : others;
  return next.sort((a, b) => (JSON.stringify(a._id) < JSON.stringify(b._id) ? -1 : 1));
}
