"""First-token Progress batching in the front door's link (issue 17.2).

The first tokens of all streams that got one in the same event-loop iteration go to
the scheduler as ONE Progress, sent before the loop's next iteration is over (not on
the 100 ms tick); a Done that comes first makes the pending count moot.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import zmq.asyncio

from infergridd import protocol as p
from infergridd.frontdoor.link import FrontdoorLink


def _link(tmp_path: Path) -> tuple[FrontdoorLink, list[p.Message]]:
    link = FrontdoorLink(zmq.asyncio.Context.instance(), tmp_path / "fd.sock", "t1",
                         lambda snap: None)
    sent: list[p.Message] = []
    link.send = sent.append  # type: ignore[method-assign]
    for rid in ("a", "b", "c"):
        rec = p.QueuedRecord(request_id=rid, tenant="t", model="m", prompt_tokens=1,
                             max_tokens=8, priority=0, submitted_at=0.0)
        link.started(rec, p.Dispatch(request_id=rid, engine_id="e0", endpoint="unix:/x"))
    return link, sent


def test_first_tokens_of_one_iteration_share_one_progress(tmp_path: Path) -> None:
    async def go() -> list[p.Message]:
        link, sent = _link(tmp_path)
        link.progress("a", 1)
        link.progress("b", 1)
        link.progress("a", 2)  # a second token before the flush: the newer count goes
        assert sent == []  # not yet: at the end of the iteration
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        link.progress("b", 2)  # later tokens: the tick's batch, not sent now
        await asyncio.sleep(0)
        link.close()
        return sent

    sent = asyncio.run(go())
    assert len(sent) == 1 and isinstance(sent[0], p.Progress)
    assert sorted(sent[0].items) == [("a", 2), ("b", 1)]


def test_done_before_the_flush_sends_no_stale_progress(tmp_path: Path) -> None:
    async def go() -> list[p.Message]:
        link, sent = _link(tmp_path)
        link.progress("c", 1)
        link.finish("c", p.Outcome.OK, 1, 1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        link.close()
        return sent

    sent = asyncio.run(go())
    assert [type(m).__name__ for m in sent] == ["Done"]
