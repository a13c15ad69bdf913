"""`python -m connector` is the same as the `livesync-connector` console script."""

from connector.cli import console

raise SystemExit(console())
