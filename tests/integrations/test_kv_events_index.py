"""The gateway's index of vLLM's KV cache events, without engines (issue 16, item 3)."""

from __future__ import annotations

import pytest

from saga.gateway.kv_events import KVIndex, decode_payload
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.view import CallInfo
from saga.wire.prefix import text_runs


def _stored(hashes: list[int], parent: int | None, session: str, size: int = 2) -> dict:
    tokens = [h * 10 + i for h in hashes for i in range(size)]
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
            "token_ids": tokens, "block_size": size, "medium": "GPU", "session_id": session}


def test_index_follows_stores_removals_and_resets() -> None:
    index = KVIndex()
    index.apply_batch(0, [_stored([1, 2, 3], None, "w1")])
    index.apply_batch(1, [_stored([4], 3, "w1"), _stored([7, 8], None, "w2")])
    assert index.cached_blocks == 6
    assert index.session_prefix_blocks("w1") == 4  # 1 <- 2 <- 3 <- 4
    assert index.match_tokens([10, 11, 20, 21, 30, 31, 99], 2) == 3
    assert index.match_tokens([10, 11, 20, 99], 2) == 1
    index.apply_batch(3, [{"type": "BlockRemoved", "block_hashes": [2], "medium": "GPU"}])
    assert index.counters.missed == 1  # batch 2 never arrived
    assert index.session_prefix_blocks("w1") == 1  # the chain breaks at block 2
    assert index.match_tokens([10, 11, 20, 21, 30, 31], 2) == 1
    assert index.session_prefix_blocks("w2") == 2 and index.session_prefix_blocks("w9") == 0
    index.apply_batch(4, [_stored([5], None, "w3", size=2) | {"medium": "CPU"}])
    assert index.cached_blocks == 5  # another tier's copy is not the GPU's
    index.apply_batch(5, [{"type": "AllBlocksCleared"}])
    assert index.cached_blocks == 0 and index.session_prefix_blocks("w2") == 0
    c = index.counters
    assert (c.batches, c.stored, c.removed, c.cleared) == (5, 6, 1, 1)


def test_decode_payload_reads_vllms_msgpack_batch() -> None:
    msgspec = pytest.importorskip("msgspec", reason="needs the `gateway-events` extra")
    payload = msgspec.msgpack.encode([1.5, [_stored([1], None, "w"),
                                           {"type": "AllBlocksCleared"}], 0])
    events = decode_payload(payload)
    assert [e["type"] for e in events] == ["BlockStored", "AllBlocksCleared"]
    assert events[0]["session_id"] == "w"


def test_the_view_cuts_the_estimate_to_what_the_engine_still_holds() -> None:
    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=2)
    text = "x" * 8 * 6  # 6 gateway blocks of 2 tokens (8 characters)
    runs = text_runs(text, 2)
    info = CallInfo(workflow="w1", tenant="default", agent="a", call_id="0", index=0,
                    tool=None, prompt_tokens=12, runs=runs, issued_at=0.0,
                    workflow_arrival=0.0, slo=None, ends_workflow=False)
    call = GatewayCall(info, 0, 2, 0, 0.0)
    assert view.try_start(call, 0.0)
    assert view.cached_blocks_for(runs) == 6  # the estimate: everything sent is there
    index = KVIndex()
    view.events = index
    assert view.cached_blocks_for(runs) == 0  # the engine stored nothing for w1
    index.apply_batch(0, [_stored([1, 2, 3, 4, 5, 6], None, "w1")])
    assert view.cached_blocks_for(runs) == 6
    index.apply_batch(1, [{"type": "BlockRemoved", "block_hashes": [3]}])
    assert view.cached_blocks_for(runs) == 2
    assert view.prefix_lookups == [3, 18, 8]


def test_a_session_stored_depth_counts_its_chain_as_stored_live_or_not() -> None:
    index = KVIndex()
    assert index.session_stored_blocks("w1") == 0
    index.apply_batch(0, [_stored([1, 2, 3], None, "w1")])
    index.apply_batch(1, [_stored([4, 5], 3, "w1")])
    assert index.session_stored_blocks("w1") == 5  # 1 <- 2 <- 3 <- 4 <- 5
    index.apply_batch(2, [{"type": "BlockRemoved", "block_hashes": [2, 5], "medium": "GPU"}])
    # computed once, whatever the engine evicted since
    assert (index.session_stored_blocks("w1"), index.session_prefix_blocks("w1")) == (5, 1)
    index.apply_batch(3, [_stored([9], 77, "w2")])  # its parent was stored before we listened
    assert index.session_stored_blocks("w2") == 1
    index.apply_batch(4, [_stored([6], 2, "w3")])  # a branch off w1's chain
    assert index.session_stored_blocks("w3") == 3
