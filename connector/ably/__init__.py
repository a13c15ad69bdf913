"""The publishing pipeline's Ably side: the in-flight ledger, the publisher and the REST client.

Every source hands `OutboundMessage`s to the same `Publisher`; nothing here knows which database they came
from.
"""
