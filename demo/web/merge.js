// Models SDK merge functions for the connector's change events (`event.data` is the change event).
// They apply values, not deltas, so replaying an event the state already reflects changes nothing.

function applyUpdate(doc, description) {
  const next = { ...doc, ...description.updatedFields };
  for (const field of description.removedFields ?? []) delete next[field];
  return next;
}

// A model of one document (channel `<collection>:<_id>`, pipelines/models-sdk.json): the document or null.
export function mergeDocument(state, event) {
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
  const change = event.data;
  const id = JSON.stringify(change.documentKey._id);
  const others = state.filter((doc) => JSON.stringify(doc._id) !== id);
  const current = state.find((doc) => JSON.stringify(doc._id) === id);
  const merged = mergeDocument(current ?? null, event);
  const next = merged ? [...others, merged] : others;
  return next.sort((a, b) => (JSON.stringify(a._id) < JSON.stringify(b._id) ? -1 : 1));
}
