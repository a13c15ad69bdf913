// Keeps a Models SDK 0.0.4 model correct across connection loss: pause it while the connection is down,
// resume it (from channel history, at its last sequenceId) when the connection is back.
// Needed because the SDK does not recover from a channel discontinuity by itself: on a suspended channel
// its stream reports an error to an RxJS Subject, which stays closed, and the model silently stops
// receiving events while still reporting "ready".
export function pauseWhileDisconnected(ably, model) {
  let pausing = Promise.resolve();
  ably.connection.on(['disconnected', 'suspended'], () => {
    if (model.state === 'ready') pausing = model.pause();
  });
  ably.connection.on('connected', async () => {
    await pausing;
    if (model.state === 'paused') await model.resume();
  });
}
