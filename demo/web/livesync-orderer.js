// Orders LiveSync message ids for the Models SDK (`eventBufferOptions.eventOrderer`).
// MongoDB ids are resume-token hex strings: they sort in stream order as text.
// Postgres ids are decimal sequence numbers: compared as numbers, exactly (length first, no Number()).
export function livesyncOrderer(a, b) {
  const x = String(a);
  const y = String(b);
  if (/^\d+$/.test(x) && /^\d+$/.test(y) && x.length !== y.length) {
    return x.length < y.length ? -1 : 1;
  }
  return x < y ? -1 : x > y ? 1 : 0;
}
