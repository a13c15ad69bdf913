// Encrypted channels (the connector's CHANNEL_CIPHER_KEY) for a client that does not open its channels
// itself, such as the Models SDK. Plain ably-js needs none of this: `channels.get(name, { cipher: { key } })`.
//
// @ably-labs/models 0.0.4 gets its channel by name only, and before attaching calls
// `channel.setOptions({ params })`, which in ably-js replaces every channel option, the cipher included:
// the model would then receive ciphertext. After `useChannelCipher(ably, key)`, every channel this client
// opens (whose name starts with `prefix`) gets the key, and keeps it through later setOptions() calls,
// including a channel the SDK releases and opens again when it resyncs.
export function useChannelCipher(ably, key, { prefix = '' } = {}) {
  const channels = ably.channels;
  const get = channels.get.bind(channels);
  channels.get = (name, options) => {
    if (!String(name).startsWith(prefix)) return get(name, options);
    if (channels.all[String(name)]) return get(name, options); // already keeps the key (below)
    const channel = get(name, { ...options, cipher: { key } });
    const setOptions = channel.setOptions.bind(channel);
    channel.setOptions = (next) => setOptions({ ...next, cipher: { key } });
    return channel;
  };
}
