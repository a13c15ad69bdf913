"""Invariant 1 (no gaps) and invariant 5 (bounded memory) at the ledger level."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.ably.ledger import InFlightLedger


def token(seq: int) -> dict[str, str]:
    return {"_data": f"{seq:08x}"}


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=60).flatmap(lambda n: st.permutations(range(n))))
def test_token_never_stored_past_an_unacknowledged_event(order: list[int]) -> None:
    """Acks in any order across channels never yield a checkpoint past a pending event."""

    async def scenario() -> None:
        ledger = InFlightLedger(capacity=len(order))
        for seq in range(len(order)):
            await ledger.reserve(seq, token(seq))
        acked: set[int] = set()
        for seq in order:
            ledger.complete(seq)
            acked.add(seq)
            safe = ledger.checkpoint()
            # The longest acknowledged prefix decides the safe token, exactly.
            prefix = 0
            while prefix in acked:
                prefix += 1
            if prefix == 0:
                assert safe is None
                assert ledger.safe_seq == -1
            else:
                assert safe == token(prefix - 1)
                assert ledger.safe_seq == prefix - 1
                assert all(s in acked for s in range(prefix))
        assert ledger.is_idle()
        assert ledger.checkpoint() == token(len(order) - 1)

    asyncio.run(scenario())


async def test_reserve_waits_while_full_and_resumes_after_a_completion() -> None:
    ledger = InFlightLedger(capacity=2)
    await ledger.reserve(0, token(0))
    await ledger.reserve(1, token(1))
    assert ledger.full
    third = asyncio.create_task(ledger.reserve(2, token(2)))
    await asyncio.sleep(0.01)
    assert not third.done(), "reserve must block while the ledger is full (backpressure)"
    ledger.complete(1)  # out of order: frees a slot but does not move the checkpoint
    await asyncio.wait_for(third, 1)
    assert ledger.pending == 2
    assert ledger.checkpoint() is None


async def test_completing_twice_or_unknown_is_harmless() -> None:
    ledger = InFlightLedger(capacity=4)
    await ledger.reserve(5, token(5))
    ledger.complete(5)
    ledger.complete(5)
    ledger.complete(99)
    assert ledger.pending == 0
    assert ledger.checkpoint() == token(5)


async def test_sequence_numbers_must_increase() -> None:
    ledger = InFlightLedger(capacity=4)
    await ledger.reserve(3, token(3))
    with pytest.raises(ValueError):
        await ledger.reserve(3, token(3))


async def test_wait_idle_is_bounded() -> None:
    ledger = InFlightLedger(capacity=4)
    await ledger.reserve(0, token(0))
    assert await ledger.wait_idle(0.01) is False
    ledger.complete(0)
    assert await ledger.wait_idle(0.01) is True


async def test_add_refuses_a_full_ledger() -> None:
    ledger = InFlightLedger(capacity=1)
    ledger.add(0, token(0))
    with pytest.raises(RuntimeError):
        ledger.add(1, token(1))
    ledger.complete(0)
    ledger.add(1, token(1))
    assert ledger.pending == 1
