"""``Charging``: a request's usage, from estimate to the engine's real count.

Three steps (see ``vtc.py`` for why): the prompt estimate is charged at
dispatch (``Books.start``), output as it streams (``progress``), and at
``Done`` both are corrected to what the engine reported (``finish``).  The
same correction goes to the tenant's quota (the tokens reserved at admission
are settled to the engine's count: refunded when it used less, debited, into
debt, when it used more) and to its stats.  A request is charged what the
engine did even when it did not finish: a cancelled one its prompt and what
streamed, one the engine took and failed on its prompt (the front door reports
the estimate then, ``frontdoor/relay.py``); only one that never reached an
engine comes back free.

``finish`` is also where the odd endings are settled: a duplicate ``Done``
(nothing), a ``Done`` for a request that ended ``LOST`` (correct its charges
now), for a request queued here but run elsewhere (charge it in full), and a
*ghost* — a request this core never knew, finished while the scheduler was
away: its output is charged, its prompt was charged by the scheduler that
dispatched it.
"""

from __future__ import annotations

from .. import protocol as p
from .books import Books
from .headroom import Headroom
from .policy import Policy
from .quotas import Quotas
from .record import Record, RecordState
from .residency import Residency
from .tenants import TenantRegistry


class Charging:
    """Streaming charges and the settling of every ``Done``."""

    def __init__(self, tenants: TenantRegistry, policy: Policy, quotas: Quotas,
                 headroom: Headroom, residency: Residency, books: Books) -> None:
        self.tenants = tenants
        self.policy = policy
        self.quotas = quotas
        self.headroom = headroom
        self.residency = residency
        self.books = books

    def progress(self, request_id: str, completion_tokens: int) -> None:
        """Completion tokens so far (cumulative): charge the new ones as they stream."""
        rec = self.books.get(request_id)
        if rec is None or rec.state is not RecordState.INFLIGHT \
                or completion_tokens <= rec.completion_tokens:
            return
        delta = completion_tokens - rec.completion_tokens
        if not rec.completion_tokens:
            self.headroom.first_token(request_id, rec.engine_id)
        rec.completion_tokens = completion_tokens
        self.policy.on_progress(rec.tenant, delta)
        rec.charged_completion += delta

    def finish(self, d: p.Done, now: float, prompt_charged: bool = True) -> bool:
        """Apply one Done; True when it freed a slot, False when it changed nothing
        dispatchable (a duplicate, a lost or ghost request, one never dispatched here).
        ``prompt_charged=False``: a ghost whose prompt nobody charged (a slot lease's)."""
        rid = d.request_id
        books = self.books
        rec = books.get(rid)
        if rec is None:
            if books.finished(rid):
                lost = books.lost(rid)
                if lost is None:
                    return False  # a duplicate
                # ended as lost when its front door went silent; now the real usage is known
                self._charge_usage(lost, d, now)
                books.settle_lost(rid)
                return False
            self._charge_ghost(d, prompt_charged)
            books.remember_finished(rid, None)
            return False
        if rec.state is RecordState.QUEUED:
            # it ran without this core's dispatch (re-queued by a Hello while it ran)
            books.unqueue(rec)
            rec.charged_prompt = rec.charged_completion = 0
            self._charge_usage(rec, d, now)
            books.remember_finished(rid, None)
            return False
        books.free(rec)
        books.unlink(rec)
        self._charge_usage(rec, d, now)
        books.remember_finished(rid, None)
        self.residency.note_activity(rec.model, now)
        return True

    def _charge_ghost(self, d: p.Done, prompt_charged: bool = True) -> None:
        """Unknown: it finished while the scheduler was away (restart).  The prompt was
        charged by the scheduler that dispatched it (unless ``prompt_charged`` is False);
        the output mostly streamed while nobody counted, so charge the output."""
        if d.tenant not in self.tenants:
            return
        ghost = self.books.new_record(d.request_id, d.tenant, d.model, d.prompt_tokens, 0, 0,
                                      0.0)
        ghost.charged_prompt = ghost.prompt_tokens if prompt_charged else 0
        self.policy.on_done(ghost, d.prompt_tokens, d.completion_tokens)
        c = self.books.counts(d.tenant)
        c.tokens_in += max(0, d.prompt_tokens)
        c.tokens_out += max(0, d.completion_tokens)

    def _charge_usage(self, rec: Record, d: p.Done, now: float) -> None:
        """Correct the policy's charges, the quota and the stats to the real usage.

        An engine that ended early may report no usage: a request that produced
        output surely had its prompt processed (keep the estimate), and a
        cancelled one keeps what streamed."""
        completion = max(0, d.completion_tokens)
        if d.outcome != p.Outcome.OK:
            completion = max(completion, rec.completion_tokens)
        prompt = max(0, d.prompt_tokens)
        if prompt == 0 and (completion > 0 or d.outcome == p.Outcome.CANCELLED):
            prompt = rec.prompt_tokens
        self.policy.on_done(rec, prompt, completion)
        c = self.books.counts(rec.tenant)
        lost = rec.state is RecordState.LOST
        c.tokens_in += prompt - rec.charged_prompt if lost else prompt
        c.tokens_out += completion - rec.charged_completion if lost else completion
        rec.charged_prompt, rec.charged_completion = prompt, completion
        if rec.quota_tokens:
            # settle the reservation to the real usage, both ways (``Quotas.refund``).
            # Only one this core made: a request a previous scheduler admitted (adopted
            # from a Hello) had its reservation in the restored bucket already, and
            # debiting its whole usage again would charge it twice
            self.quotas.refund(rec.tenant, rec.quota_tokens - prompt - completion, now)
        rec.quota_tokens = 0
