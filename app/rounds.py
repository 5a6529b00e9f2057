"""Study rounds as an admin defines them, from the command line (``./launch.sh queue-round``) or the Data tab:
the same store calls, the same audit rows and the same one-line summaries for both.

A round fixes which bank prompts every annotator's queue hands out (``split``) and, with 2-4 ``contestants``,
which checkpoints answer each of them for everyone; ``blind`` keeps the names hidden from everyone, admins
included. Closing a round stops its queue and releases its interim results (``study.interim_results``).
"""

from __future__ import annotations

from app.contestants import register_contestants
from core.config import Config
from preference_store.repository import PreferenceStore


def start_study_round(
    cfg: Config,
    store: PreferenceStore,
    admin_id: int | None,
    actor: str,
    contestants: list[str],
    split: str = "all",
    blind: bool = False,
    address: str | None = None,
) -> str:
    """Start the next queue round (``admin_id`` None: the command line) and audit it; the summary line.
    Refuses a contestant that is not a completed run's stage or endpoint, and a bank without prompts of ``split``."""
    contestants = list(dict.fromkeys(c.strip() for c in contestants if c.strip()))
    register_contestants(cfg, store, contestants)  # refuses an id that is not a completed run's stage
    new = store.start_queue_round(admin_id, contestants, split=split, blind=blind)
    allocation = store.queue_round_definition().allocation  # the round just started
    store.record_event(
        "queue.round",
        actor=actor,
        target=str(new),
        address=address,
        detail={"contestants": contestants, "split": split, "blind": blind, "allocation": allocation},
    )
    prompts = sum(split in ("all", p.split) for p in store.bank_prompts())
    where = "" if split == "all" else f"{split} "
    answered = (
        f"answered by {', '.join(contestants)} for everyone" + (", blind" if blind else "")
        if contestants
        else "each annotator chooses the contestants"
    )
    k = cfg.store.annotators_per_prompt
    places = (
        f"adaptive allocation: {min(2, k)} annotators per prompt, up to {k} only where they disagree"
        + (
            ", two identical answers resolved as ties"
            if len(contestants) <= 2
            else ", each prompt shows the pair of contestants whose order is least certain"
        )
        if allocation == "adaptive"
        else f"{k} annotators per prompt"
    )
    return (
        f"queue round {new} started: every annotator's queue holds the {prompts} {where}bank prompts again "
        f"({places}), {answered}"
    )


def close_study_round(store: PreferenceStore, admin_id: int | None, actor: str, address: str | None = None) -> str:
    """Close the open queue round (``admin_id`` None: the command line) and audit it; the summary line.
    Refused when no round is open."""
    closed = store.close_queue_round(admin_id)
    store.record_event("queue.round_closed", actor=actor, target=str(closed.number), address=address)
    return f"queue round {closed.number} closed: queues hand out nothing more; its results are shown to everyone"
