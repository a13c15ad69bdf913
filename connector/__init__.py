"""livesync-connector: MongoDB change streams published to Ably channels."""

__version__ = "0.1.0"
