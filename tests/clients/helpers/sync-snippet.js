// sync() for a Models SDK model on a MongoDB channel: read the sequenceId BEFORE the state,
// so replaying history from it can only repeat events, never skip one.
export async function syncOrder(orders, id) {
  const stream = orders.watch([], { maxAwaitTimeMS: 100 });
  try {
    while (!stream.resumeToken) await stream.tryNext(); // the post-batch resume token
    const sequenceId = stream.resumeToken._data;
    const data = await orders.findOne({ _id: id });
    return { sequenceId, data };
  } finally {
    await stream.close();
  }
}
