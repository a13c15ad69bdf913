"""Where changes come from: one subpackage per database, each producing `OutboundMessage`s."""
