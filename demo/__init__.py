"""`make demo`: the real connector between the emulated replica set and the Ably emulator."""
