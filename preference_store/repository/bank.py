"""The shared prompt bank and each annotator's queue: importing banks, handing out assignments, progress.

The assignment rule (``next_assignment``):

- an annotator first gets back their own open assignment, if it has not expired;
- otherwise a new one, on a bank prompt with fewer than ``store.annotators_per_prompt`` (k) *live*
  assignments (done, or open and not expired) that this annotator never had, in any status: fewest
  live assignments first, then the oldest prompt (bank file order);
- an open assignment older than ``store.assignment_timeout_minutes`` expires, and its place goes to
  someone else. A judgment that arrives late is still stored; its assignment becomes done only if the
  place is still free, so a prompt never counts more than k done assignments (see ``complete_assignment``).

With ``study.allocation: adaptive`` (fixed per round when it starts: every replica and the API follow the
round's rule) a prompt's places are spent where they tell something:

- a prompt with fewer than two live assignments is open as above (a second annotator always);
- a prompt with two or more is open to another annotator (up to k) only once all of its live assignments are
  done and their judgments *disagree*: two annotators who judged the same two checkpoints gave different
  verdicts (one preferred the other checkpoint, or called a tie), or no two of them can be compared (other
  contestants, only corrections). Agreeing prompts are settled with two judgments;
- in a round of two contestants, a prompt whose two answers are the same text after whitespace
  normalisation (the queue's seeded decoding gives every annotator the same answers) is resolved as a tie
  when its first comparison is recorded (:func:`resolve_identical`): the assignment is done, nobody is asked
  to judge it, and the resolution is kept in ``store_meta`` (``queue_round.N.tie.PROMPT``), never as a vote.
- in a round of 3-4 contestants, each prompt shows two of them: the pair whose order is least certain on the
  battles among them so far, or, for a share ``study.pair_floor`` of the prompts, a pair drawn uniformly
  (:mod:`~preference_store.statistics.active`). The pair is chosen when the prompt is first handed out in the
  round and kept in ``store_meta`` (``queue_round.N.pair.PROMPT``); its later annotators get the same pair, so
  their verdicts can be compared (agreement, a third annotator on disagreement). The draw is a hash of the round
  and the prompt: two replicas choosing for the same prompt on the same judgments choose the same pair. A
  comparison on the assignment must show exactly that pair (:func:`check_queue_pair`).

All of this is within the current *queue round*, until an admin closes it or, for a round that asks whether
one run beats another, its question is decided (:mod:`~preference_store.repository.decisions`). Once a
round's prompts are judged (or to judge a new run on the same prompts), an admin starts the next round
(``start_queue_round``): every annotator's queue holds the bank again, the k-annotator rule now counting that round's assignments. The admin defines
the round (:class:`~preference_store.records.QueueRound`): which split's prompts it hands out, and which
2-4 checkpoints answer them for everyone (the arena then takes no other), blind or not. The definition is
kept as JSON in ``store_meta`` (``queue_round.N``) beside the round number: no column of its own.

Choosing and inserting happen in one write transaction. On SQLite that transaction holds the write lock
from its start (``BEGIN IMMEDIATE``), so assigners run one at a time; on other databases the chosen
prompt's row is locked (``SELECT ... FOR UPDATE``) and its places counted again before inserting. The
unique (bank prompt, annotator, round) constraint is the last guard against giving anyone a prompt twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from core.config.app import ALLOCATIONS
from preference_store.bank_file import read_bank
from preference_store.models import (
    AnnotatorRow,
    AnswerRatingRow,
    AssignmentRow,
    BankPromptRow,
    CheckpointRow,
    ComparisonRow,
    JudgmentRow,
    ResponseRow,
    StoreMetaRow,
    utcnow,
)
from preference_store.pairs import battle_outcomes
from preference_store.records import (
    PANEL_LABELS,
    ROUND_SPLITS,
    Assignment,
    BankImportSummary,
    BankPrompt,
    QueueProgress,
    QueueRound,
    ResolvedTie,
)
from preference_store.repository.decisions import RoundDecisions
from preference_store.repository.leaderboard import LIVE, load_judged
from preference_store.repository.sessions import StoreSessions, new_id
from preference_store.statistics.active import draw_pair, order_uncertainty, pair_probabilities
from preference_store.statistics.bradley_terry import judged_battles
from preference_store.validation import NotFoundError, PreferenceStoreError

CANDIDATES = 20  # prompts tried per assignment when another database took the first ones meanwhile
CHUNK = 500  # ids per IN (...) query: under SQLite's bound-parameter limit


class BankQueue(RoundDecisions, StoreSessions):
    """Importing prompt banks, and the queues that give each bank prompt to k different annotators."""

    # --- the bank ------------------------------------------------------------------------------------
    def import_bank(
        self, path: str | Path, bank: str | None = None, imported_by: int | None = None
    ) -> BankImportSummary:
        """Import a ``.jsonl`` or ``.csv`` bank file (see :mod:`preference_store.bank_file`) in one transaction.

        Malformed lines are listed as "FILE:LINE: reason" and the rest is imported; a prompt already in
        the store (from any bank) or twice in the file is imported once and counted as a duplicate.
        ``bank`` names the bank (default the file's stem); ``imported_by`` None = the command line, else
        an admin's id.
        """
        parsed, errors = read_bank(path, self.settings.max_text_chars)
        name = (bank or Path(path).stem).strip()
        if not name or len(name) > 100:
            raise PreferenceStoreError(f"bank name {name!r} must be 1-100 characters")

        # with store.redact_on_entry a bank prompt is kept (and so asked) de-identified, as typed prompts are;
        # redacted before the write transaction, which should not wait for the de-identifier
        kept = {p.content_sha256: self._kept_messages(p.messages) for p in parsed}

        def work(session: Session) -> BankImportSummary:
            if imported_by is not None:
                admin = session.get(AnnotatorRow, imported_by)
                if admin is None or admin.role != "admin":
                    raise PreferenceStoreError("only admins can import a prompt bank")
            hashes = [p.content_sha256 for p in parsed]
            known: set[str] = set()
            for start in range(0, len(hashes), CHUNK):
                known |= set(
                    session.scalars(
                        select(BankPromptRow.content_sha256).where(
                            BankPromptRow.content_sha256.in_(hashes[start : start + CHUNK])
                        )
                    )
                )
            now, imported = utcnow(), 0
            for p in parsed:
                if p.content_sha256 in known:
                    continue
                known.add(p.content_sha256)
                # one microsecond apart: "oldest first" then follows the file's order
                session.add(
                    BankPromptRow(
                        id=new_id(),
                        bank=name,
                        messages=kept[p.content_sha256],
                        tags=p.tags,
                        split=p.split,
                        content_sha256=p.content_sha256,
                        source=p.source,
                        imported_by=imported_by,
                        created=now + timedelta(microseconds=imported),
                    )
                )
                imported += 1
            return BankImportSummary(bank=name, imported=imported, duplicates=len(parsed) - imported, errors=errors)

        try:
            return self._write(work)
        except IntegrityError:  # another import stored one of these prompts meanwhile: count it as a duplicate
            return self._write(work)

    def bank_prompts(self, bank: str | None = None) -> list[BankPrompt]:
        """The bank's prompts (all banks' with None), oldest first."""
        query = select(BankPromptRow).order_by(BankPromptRow.created, BankPromptRow.id)
        if bank is not None:
            query = query.where(BankPromptRow.bank == bank)
        with self._read() as session:
            return [bank_prompt_record(row) for row in session.scalars(query)]

    def bank_prompt(self, bank_prompt_id: str) -> BankPrompt:
        with self._read() as session:
            row = session.get(BankPromptRow, bank_prompt_id)
            if row is None:
                raise NotFoundError(f"no bank prompt {bank_prompt_id!r}")
            return bank_prompt_record(row)

    # --- the queue -----------------------------------------------------------------------------------
    def queue_round(self) -> int:
        """The current queue round (1 until an admin starts another)."""
        with self._read() as session:
            return _current_round(session)

    def queue_round_definition(self) -> QueueRound:
        """The current queue round as the admin defined it (round 1 before any ``queue-round``: undefined,
        every annotator chooses their contestants, all splits, never open)."""
        with self._read() as session:
            return _round_definition(session, _current_round(session))

    def start_queue_round(
        self,
        admin_id: int | None,
        contestants: list[str] | tuple[str, ...] = (),
        split: str = "all",
        blind: bool = False,
        allocation: str | None = None,
    ) -> int:
        """Start the next queue round (an admin's id, or None for the command line): every annotator may be
        given every bank prompt of ``split`` (heldout | train | all) again, e.g. to judge a new run against its
        parent on the same prompts. With 2-4 registered ``contestants`` every queue prompt of the round is
        answered by exactly these for everyone; ``blind``: nobody may judge the round with names shown;
        ``allocation`` (uniform | adaptive; None: ``study.allocation``) how the queue spends its places. The
        previous round closes. Open assignments of the old round stay judgeable (a judgment on them is
        stored), but hold no place. Returns the new round."""
        ids = list(dict.fromkeys(c.strip() for c in contestants if c.strip()))
        if ids and not 2 <= len(ids) <= len(PANEL_LABELS):
            raise PreferenceStoreError(
                f"a round compares 2-{len(PANEL_LABELS)} different contestants (given {len(ids)})"
            )
        if split not in ROUND_SPLITS:
            raise PreferenceStoreError(f"unknown split {split!r}: choose {', '.join(ROUND_SPLITS)}")
        allocation = allocation or self.study.allocation
        if allocation not in ALLOCATIONS:
            raise PreferenceStoreError(f"unknown allocation {allocation!r}: choose {', '.join(ALLOCATIONS)}")

        def work(session: Session) -> int:
            if admin_id is not None:
                admin = session.get(AnnotatorRow, admin_id)
                if admin is None or admin.role != "admin":
                    raise PreferenceStoreError("only admins can start a new queue round")
            unknown = [c for c in ids if session.get(CheckpointRow, c) is None]
            if unknown:
                raise NotFoundError(
                    f"unknown contestant {', '.join(unknown)}: give RUN/STAGE ids of trained runs "
                    "(the Compare tab's list, or /contestants)"
                )
            prompts = select(func.count()).select_from(BankPromptRow)
            if split != "all":
                prompts = prompts.where(BankPromptRow.split == split)
            if not session.scalar(prompts):
                raise PreferenceStoreError(
                    f"the bank has no {'' if split == 'all' else split + ' '}prompts: "
                    "import a bank first (./launch.sh import-bank FILE)"
                    + ("" if split == "all" else " or choose another --split")
                )
            now = utcnow()
            old = _current_round(session)
            previous = session.get(StoreMetaRow, _definition_key(old))
            if previous is not None:  # a new round closes the one before
                previous.value = json.dumps({**json.loads(previous.value), "closed": now.isoformat()})
            new = old + 1
            _set_meta(session, ROUND_KEY, str(new))
            _set_meta(
                session,
                _definition_key(new),
                json.dumps(
                    {
                        "contestants": ids,
                        "split": split,
                        "blind": bool(blind),
                        "allocation": allocation,
                        "started": now.isoformat(),
                        "closed": None,
                    }
                ),
            )
            return new

        return self._write(work)

    def close_queue_round(self, admin_id: int | None) -> QueueRound:
        """Close the current round (an admin's id, or None for the command line): its queue hands out nothing
        more and its interim results may be shown to everyone (``study.interim_results``). Refused when no
        round is open."""

        def work(session: Session) -> QueueRound:
            if admin_id is not None:
                admin = session.get(AnnotatorRow, admin_id)
                if admin is None or admin.role != "admin":
                    raise PreferenceStoreError("only admins can close a queue round")
            current = _current_round(session)
            row = session.get(StoreMetaRow, _definition_key(current))
            if row is None or json.loads(row.value).get("closed"):
                raise PreferenceStoreError(
                    f"queue round {current} is not open: start one with ./launch.sh queue-round --contestants ID,ID"
                )
            row.value = json.dumps({**json.loads(row.value), "closed": utcnow().isoformat()})
            return _round_definition(session, current)

        return self._write(work)

    def next_assignment(self, annotator_id: int) -> Assignment | None:
        """The annotator's open assignment, or a new one by the rule in the module docstring; None when
        nothing is left for them (every prompt judged by them or by k others)."""
        k = self.settings.annotators_per_prompt

        def work(session: Session) -> Assignment | None:
            if session.get(AnnotatorRow, annotator_id) is None:
                raise NotFoundError(f"no annotator with id {annotator_id}: log in again")
            now = utcnow()
            cutoff = now - timedelta(minutes=self.settings.assignment_timeout_minutes)
            current = _current_round(session)
            defined = _round_definition(session, current)
            session.execute(
                update(AssignmentRow)
                .where(AssignmentRow.status == "open", AssignmentRow.assigned < cutoff)
                .values(status="expired")
            )
            own = session.scalar(
                select(AssignmentRow)
                .where(
                    AssignmentRow.annotator_id == annotator_id,
                    AssignmentRow.status == "open",
                    AssignmentRow.round == current,
                )
                .order_by(AssignmentRow.assigned)
                .limit(1)
            )
            if own is not None:
                record = assignment_record(own, session.get(BankPromptRow, own.bank_prompt_id))
                return replace(record, contestants=_prompt_pair(session, current, own.bank_prompt_id))
            # a closed round hands out nothing new, nor one whose question is decided (decisions.py)
            if defined.closed is not None or self._round_decided(session, defined):
                return None
            candidates = self._candidates(session, annotator_id, defined, cutoff, CANDIDATES)
            for prompt_id in candidates:
                # on PostgreSQL and the like: lock the prompt, then count its places again (SQLite holds
                # the whole database's write lock already, and ignores FOR UPDATE)
                prompt = session.scalar(select(BankPromptRow).where(BankPromptRow.id == prompt_id).with_for_update())
                if _live_count(session, prompt_id, cutoff, current) >= k:
                    continue
                if self._allocation(defined) == "adaptive" and prompt_id not in self._candidates(
                    session, annotator_id, defined, cutoff, None, only=[prompt_id]
                ):
                    continue  # another replica's assignment on it meanwhile: its first annotators are not done
                row = AssignmentRow(
                    id=new_id(),
                    bank_prompt_id=prompt_id,
                    annotator_id=annotator_id,
                    round=current,
                    status="open",
                    assigned=now,
                )
                session.add(row)
                session.flush()  # the unique (prompt, annotator) constraint is checked here
                return replace(
                    assignment_record(row, prompt), contestants=self._choose_pair(session, defined, prompt_id)
                )
            return None

        for attempt in range(3):
            try:
                return self._write(work)
            except IntegrityError:
                # the same annotator asked twice at once (two browser tabs): the other call's assignment
                # is theirs now, and the next attempt returns it as their open one
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def queue_progress(self, annotator_id: int) -> QueueProgress:
        """How many bank prompts the annotator has judged through their queue in the current round, of how
        many they can get (done + their open assignment + prompts with a free place they never had)."""
        cutoff = utcnow() - timedelta(minutes=self.settings.assignment_timeout_minutes)
        with self._read() as session:
            current = _current_round(session)
            defined = _round_definition(session, current)
            mine = dict(
                session.execute(
                    select(AssignmentRow.status, func.count())
                    .where(
                        AssignmentRow.annotator_id == annotator_id,
                        AssignmentRow.round == current,
                        or_(
                            AssignmentRow.status == "done",
                            and_(AssignmentRow.status == "open", AssignmentRow.assigned >= cutoff),
                        ),
                    )
                    .group_by(AssignmentRow.status)
                ).all()
            )
            free = (
                len(self._candidates(session, annotator_id, defined, cutoff, None))
                if defined.closed is None and not self._round_decided(session, defined, record=False)
                else 0
            )
        done = mine.get("done", 0)
        return QueueProgress(done=done, total=done + mine.get("open", 0) + free)

    def _choose_pair(self, session: Session, defined: QueueRound, prompt_id: str) -> tuple[str, ...]:
        """The two contestants ``prompt_id`` shows in an adaptive round of 3-4 (inside next_assignment's write
        transaction): the pair chosen for it earlier in the round, else a new one by active sampling (the module
        docstring), recorded. () in any other round."""
        if self._allocation(defined) != "adaptive" or len(defined.contestants) <= 2:
            return ()
        chosen = _prompt_pair(session, defined.number, prompt_id)
        if chosen:
            return chosen
        uncertainty = self._order_uncertainty(session, defined.contestants)
        probabilities = pair_probabilities(uncertainty, self.study.pair_floor)
        digest = hashlib.sha256(f"{defined.number}:{prompt_id}".encode()).digest()
        pair = draw_pair(probabilities, int.from_bytes(digest[:8], "big") / 2**64)
        _set_meta(
            session,
            _pair_key(defined.number, prompt_id),
            json.dumps(
                {
                    "contestants": list(pair),
                    "uncertainty": round(uncertainty[pair], 6),
                    "probability": round(probabilities[pair], 6),
                    "chosen": utcnow().isoformat(),
                }
            ),
        )
        return pair

    def _order_uncertainty(self, session: Session, contestants: tuple[str, ...]) -> dict:
        """:func:`~preference_store.statistics.active.order_uncertainty` on the counted battles among
        ``contestants`` (any comparison, bank prompt or not, as the leaderboard counts them); recomputed only when
        the live judgments changed."""
        seen = session.execute(select(func.count(), func.max(JudgmentRow.created)).where(LIVE)).one()
        key = (self.url, contestants, tuple(seen))
        cache = self.__dict__.setdefault("_uncertainty", {})
        if key not in cache:
            judged = load_judged(session, admit_unblinded=self.settings.admit_unblinded)
            battles, _ = judged_battles(judged, self.settings.exclude_leaked_battles)
            cache.clear()
            cache[key] = order_uncertainty(battles, contestants)
        return cache[key]

    def _allocation(self, defined: QueueRound) -> str:
        """The round's allocation rule (rounds started without one: ``study.allocation``)."""
        return defined.allocation or self.study.allocation

    def _candidates(
        self,
        session: Session,
        annotator_id: int,
        defined: QueueRound,
        cutoff: datetime,
        limit: int | None,
        only: list[str] | None = None,
    ) -> list[str]:
        """The bank prompts the annotator's queue may hand out now, in handing-out order (fewest live assignments,
        then the oldest prompt): under uniform allocation those with a free place of k; under adaptive, of those,
        the ones with fewer than two live assignments, and the ones whose live assignments are all done and
        disagree (:func:`_agreed`), never one resolved without a clinician."""
        k = self.settings.annotators_per_prompt
        query = _open_to(annotator_id, defined.number, cutoff, defined.split, k)
        if only is not None:
            query = query.where(BankPromptRow.id.in_(only))
        query = query.order_by(func.count(AssignmentRow.id), BankPromptRow.created, BankPromptRow.id)
        if self._allocation(defined) != "adaptive":
            return list(session.execute(query.limit(limit) if limit else query).scalars())
        counted = query.add_columns(
            func.count(AssignmentRow.id), func.sum(case((AssignmentRow.status == "done", 1), else_=0))
        )
        resolved = _resolved_prompts(session, defined.number)
        chosen, waiting = [], []
        for prompt_id, live, done in session.execute(counted):
            if prompt_id in resolved:
                continue
            if live < min(2, k):
                chosen.append(prompt_id)
            elif live == done:  # every live one judged: a third (up to k) only where they disagree
                waiting.append(prompt_id)
            if limit and len(chosen) >= limit:
                break
        if waiting and not (limit and len(chosen) >= limit):
            settled = _agreed(session, defined.number, waiting)
            order = {p: i for i, p in enumerate(chosen + waiting)}
            chosen = sorted(chosen + [p for p in waiting if p not in settled], key=order.__getitem__)
        return chosen[:limit] if limit else chosen

    def resolved_ties(self, round_: int | None = None) -> list[ResolvedTie]:
        """The bank prompts the queue resolved as ties without a clinician (adaptive allocation), of one round
        (None: the current one), oldest first."""
        with self._read() as session:
            number = _current_round(session) if round_ is None else round_
            rows = session.scalars(select(StoreMetaRow).where(StoreMetaRow.key.like(f"{_tie_key(number, '')}%")))
            ties = [
                ResolvedTie(
                    round=number,
                    bank_prompt_id=row.key.rsplit(".", 1)[1],
                    comparison_id=value["comparison_id"],
                    assignment_id=value["assignment_id"],
                    rule=value["rule"],
                    resolved=datetime.fromisoformat(value["resolved"]),
                )
                for row in rows
                for value in [json.loads(row.value)]
            ]
        return sorted(ties, key=lambda t: (t.resolved, t.bank_prompt_id))

    def assignments(self, annotator_id: int | None = None, bank_prompt_id: str | None = None) -> list[Assignment]:
        """Assignments (one annotator's, one prompt's, or all), oldest first, in every status."""
        query = (
            select(AssignmentRow, BankPromptRow)
            .join(BankPromptRow, BankPromptRow.id == AssignmentRow.bank_prompt_id)
            .order_by(AssignmentRow.assigned, AssignmentRow.id)
        )
        if annotator_id is not None:
            query = query.where(AssignmentRow.annotator_id == annotator_id)
        if bank_prompt_id is not None:
            query = query.where(AssignmentRow.bank_prompt_id == bank_prompt_id)
        with self._read() as session:
            return [assignment_record(a, p) for a, p in session.execute(query)]

    def _study_counts(self) -> dict[str, int]:
        """The annotation study's part of ``counts()``: single-answer ratings, bank prompts, done assignments."""
        with self._read() as session:

            def count(model, *where):
                return session.scalar(select(func.count()).select_from(model).where(*where))

            return {
                "ratings": count(AnswerRatingRow),
                "bank_prompts": count(BankPromptRow),
                "assignments_done": count(AssignmentRow, AssignmentRow.status == "done"),
            }


def check_queue_fields(
    session: Session, annotator_id: int, bank_prompt_id: str | None, assignment_id: str | None
) -> str | None:
    """The bank prompt of a comparison asked through a queue (``bank_prompt_id`` may be left out when the
    assignment is given); refuses another annotator's assignment or one for a different prompt."""
    if assignment_id is not None:
        assignment = session.get(AssignmentRow, assignment_id)
        if assignment is None:
            raise NotFoundError(f"no assignment {assignment_id!r}: take the next prompt from your queue")
        if assignment.annotator_id != annotator_id:
            raise PreferenceStoreError(
                f"assignment {assignment_id} belongs to another annotator: take the next prompt from your own queue"
            )
        if bank_prompt_id is not None and bank_prompt_id != assignment.bank_prompt_id:
            raise PreferenceStoreError(
                f"assignment {assignment_id} is for bank prompt {assignment.bank_prompt_id}, not {bank_prompt_id}"
            )
        return assignment.bank_prompt_id
    if bank_prompt_id is not None and session.get(BankPromptRow, bank_prompt_id) is None:
        raise NotFoundError(f"no bank prompt {bank_prompt_id!r}")
    return bank_prompt_id


def complete_assignment(
    session: Session, comparison: ComparisonRow, when: datetime, k: int, timeout_minutes: int
) -> None:
    """Mark the comparison's assignment done when it is judged or rated (inside that write transaction).

    An open assignment becomes done, however late, as long as it was not expired: until then nobody else
    had its place. An expired one (a late judgment) becomes done only while its prompt still has a free
    place; otherwise it stays expired: the judgment is stored, and the prompt's done count stays at k.
    """
    if comparison.assignment_id is None:
        return
    assignment = session.get(AssignmentRow, comparison.assignment_id)
    if assignment is None or assignment.status == "done":
        return
    if assignment.status == "expired":
        # lock the prompt's row (other databases) before counting its places, as next_assignment does
        session.scalar(select(BankPromptRow.id).where(BankPromptRow.id == assignment.bank_prompt_id).with_for_update())
        cutoff = when - timedelta(minutes=timeout_minutes)
        if _live_count(session, assignment.bank_prompt_id, cutoff, assignment.round) >= k:
            return
    assignment.status, assignment.completed = "done", when


def _is_live(cutoff: datetime):
    """An assignment that holds a place: done, or open and not yet expired."""
    return or_(AssignmentRow.status == "done", and_(AssignmentRow.status == "open", AssignmentRow.assigned >= cutoff))


def _open_to(annotator_id: int, current: int, cutoff, split: str, k: int):
    """The ids of the round's bank prompts (of ``split``) that ``annotator_id`` never had and that have fewer than
    ``k`` live assignments: what their queue may still hand them (one query for handing out and for counting)."""
    return (
        select(BankPromptRow.id)
        .outerjoin(
            AssignmentRow,
            and_(
                AssignmentRow.bank_prompt_id == BankPromptRow.id,
                AssignmentRow.round == current,
                _is_live(cutoff),
            ),
        )
        .where(~_had_it(annotator_id, current), *_in_split(split))
        .group_by(BankPromptRow.id, BankPromptRow.created)
        .having(func.count(AssignmentRow.id) < k)
    )


def _had_it(annotator_id: int, round_: int):
    """The bank prompt was given to this annotator before in this round (any status): never again."""
    mine = aliased(AssignmentRow)  # apart from the outer query's join on assignments
    return (
        select(mine.id)
        .where(mine.bank_prompt_id == BankPromptRow.id, mine.annotator_id == annotator_id, mine.round == round_)
        .exists()
    )


def _live_count(session: Session, bank_prompt_id: str, cutoff: datetime, round_: int) -> int:
    return session.scalar(
        select(func.count())
        .select_from(AssignmentRow)
        .where(AssignmentRow.bank_prompt_id == bank_prompt_id, AssignmentRow.round == round_, _is_live(cutoff))
    )


IDENTICAL_RULE = "the two answers are the same text after whitespace normalisation"


def same_text(a: str, b: str) -> bool:
    """Two answers alike for the queue's tie rule: the same text once runs of whitespace are one space and the
    ends are stripped (a threshold on a likelihood or reward difference would need a model the store has not)."""
    return " ".join(a.split()) == " ".join(b.split())


def resolve_identical(session: Session, comparison: ComparisonRow, default_allocation: str) -> str | None:
    """Inside the write transaction that records ``comparison``: when it was asked through a queue assignment of
    an adaptive round, compares two different checkpoints and their two answers are alike (:func:`same_text`),
    resolve its bank prompt as a tie without a clinician: the assignment is done, the resolution is kept in
    ``store_meta`` (never a judgment), and the queue hands the prompt to nobody else. Returns why, or None.
    ``default_allocation``: the rule of a round started without one (``study.allocation``)."""
    if comparison.assignment_id is None or comparison.bank_prompt_id is None or len(comparison.responses) != 2:
        return None
    first, second = comparison.responses
    if first.checkpoint_id == second.checkpoint_id or not same_text(first.text, second.text):
        return None
    assignment = session.get(AssignmentRow, comparison.assignment_id)
    if assignment is None or assignment.status != "open":
        return None
    if (_round_definition(session, assignment.round).allocation or default_allocation) != "adaptive":
        return None
    now = utcnow()
    assignment.status, assignment.completed = "done", now
    _set_meta(
        session,
        _tie_key(assignment.round, comparison.bank_prompt_id),
        json.dumps(
            {
                "comparison_id": comparison.id,
                "assignment_id": assignment.id,
                "rule": IDENTICAL_RULE,
                "resolved": now.isoformat(),
            }
        ),
    )
    return f"resolved as a tie without a clinician: {IDENTICAL_RULE}"


class ResolvedWithoutClinician(PreferenceStoreError):
    """A judgment or rating of a comparison the queue resolved as a tie without a clinician: there is nothing to
    judge, and the assignment is done already."""


def check_not_resolved(session: Session, comparison: ComparisonRow, what: str) -> None:
    """Refuse to ``what`` (judge, rate) a comparison :func:`resolve_identical` resolved: its prompt is settled as a
    tie without a clinician, and a vote on it would count work nobody was asked to do."""
    if comparison.assignment_id is None or comparison.bank_prompt_id is None:
        return
    assignment = session.get(AssignmentRow, comparison.assignment_id)
    if assignment is None:
        return
    row = session.get(StoreMetaRow, _tie_key(assignment.round, comparison.bank_prompt_id))
    if row is not None and json.loads(row.value)["comparison_id"] == comparison.id:
        raise ResolvedWithoutClinician(
            f"comparison {comparison.id} was resolved as a tie without a clinician ({IDENTICAL_RULE}): nothing to "
            f"{what}; take the next prompt of your queue"
        )


def _pair_key(round_: int, bank_prompt_id: str) -> str:
    return f"{_definition_key(round_)}.pair.{bank_prompt_id}"


def _prompt_pair(session: Session, round_: int, bank_prompt_id: str) -> tuple[str, ...]:
    """The pair active sampling chose for the prompt in the round (() when none was)."""
    row = session.get(StoreMetaRow, _pair_key(round_, bank_prompt_id))
    return tuple(json.loads(row.value)["contestants"]) if row is not None else ()


def check_queue_pair(session: Session, assignment_id: str | None, checkpoint_ids: list[str]) -> None:
    """Refuse a comparison on a queue assignment whose prompt active sampling gave a pair, unless it shows exactly
    that pair: the rule holds for every replica and the API, not only for the arena that asked."""
    if assignment_id is None:
        return
    assignment = session.get(AssignmentRow, assignment_id)
    if assignment is None:
        return
    pair = _prompt_pair(session, assignment.round, assignment.bank_prompt_id)
    if pair and sorted(checkpoint_ids) != sorted(pair):
        raise PreferenceStoreError(
            f"assignment {assignment_id} shows {pair[0]} and {pair[1]} (the queue chose the pair whose order is "
            "least certain): answer it with exactly these two"
        )


def _tie_key(round_: int, bank_prompt_id: str) -> str:
    return f"{_definition_key(round_)}.tie.{bank_prompt_id}"


def _resolved_prompts(session: Session, round_: int) -> set[str]:
    prefix = _tie_key(round_, "")
    return {
        key[len(prefix) :]
        for key in session.scalars(select(StoreMetaRow.key).where(StoreMetaRow.key.like(f"{prefix}%")))
    }


def _agreed(session: Session, round_: int, prompt_ids: list[str]) -> set[str]:
    """Of ``prompt_ids``, those whose done assignments of the round agree: some two of their annotators judged
    the same two checkpoints, and every two who did gave the same verdict (the same checkpoint preferred, or
    both a tie; both-bad counts as a tie, a correction says nothing about the two)."""
    verdicts: dict[str, dict[frozenset, dict[int, str | None]]] = {}
    for start in range(0, len(prompt_ids), CHUNK):
        chunk = prompt_ids[start : start + CHUNK]
        judged = session.execute(
            select(
                AssignmentRow.bank_prompt_id,
                JudgmentRow.annotator_id,
                JudgmentRow.kind,
                JudgmentRow.choice,
                JudgmentRow.ranking,
                ComparisonRow.id,
            )
            .join(ComparisonRow, ComparisonRow.assignment_id == AssignmentRow.id)
            .join(JudgmentRow, JudgmentRow.comparison_id == ComparisonRow.id)
            .where(
                AssignmentRow.bank_prompt_id.in_(chunk),
                AssignmentRow.round == round_,
                AssignmentRow.status == "done",
                JudgmentRow.superseded_by.is_(None),
            )
            .order_by(JudgmentRow.created, JudgmentRow.id)
        ).all()
        answers: dict[str, dict[str, str]] = {}
        for cid, panel, ckpt in session.execute(
            select(ResponseRow.comparison_id, ResponseRow.panel, ResponseRow.checkpoint_id).where(
                ResponseRow.comparison_id.in_({row[-1] for row in judged})
            )
        ):
            answers.setdefault(cid, {})[PANEL_LABELS[panel]] = ckpt
        for prompt_id, annotator, kind, choice, ranking, cid in judged:
            panels = answers.get(cid, {})
            for x, y, score in battle_outcomes(kind, sorted(panels), choice, ranking):
                if panels[x] == panels[y]:
                    continue
                winner = panels[x] if score == 1.0 else panels[y] if score == 0.0 else None
                verdicts.setdefault(prompt_id, {}).setdefault(frozenset((panels[x], panels[y])), {})[annotator] = winner
    agreed = set()
    for prompt_id, by_pair in verdicts.items():
        compared = [set(v.values()) for v in by_pair.values() if len(v) > 1]
        if compared and all(len(values) == 1 for values in compared):
            agreed.add(prompt_id)
    return agreed


ROUND_KEY = "queue_round"


def _current_round(session: Session) -> int:
    row = session.get(StoreMetaRow, ROUND_KEY)
    return int(row.value) if row is not None else 1


def _definition_key(round_: int) -> str:
    return f"{ROUND_KEY}.{round_}"


def _set_meta(session: Session, key: str, value: str) -> None:
    row = session.get(StoreMetaRow, key)
    if row is None:
        session.add(StoreMetaRow(key=key, value=value))
    else:
        row.value = value


def _round_definition(session: Session, round_: int) -> QueueRound:
    """The round's definition from ``store_meta`` (a round started before rounds were defined: an open-ended
    one, as round 1)."""
    row = session.get(StoreMetaRow, _definition_key(round_))
    if row is None:
        return QueueRound(number=round_)
    value = json.loads(row.value)
    when = {key: datetime.fromisoformat(value[key]) if value.get(key) else None for key in ("started", "closed")}
    return QueueRound(
        number=round_,
        contestants=tuple(value.get("contestants", ())),
        split=value.get("split", "all"),
        blind=bool(value.get("blind")),
        decided=value.get("decided"),
        allocation=value.get("allocation"),
        **when,
    )


def _in_split(split: str) -> list:
    """The condition on a bank prompt of a round over ``split`` (none for all)."""
    return [] if split == "all" else [BankPromptRow.split == split]


def bank_prompt_record(row: BankPromptRow) -> BankPrompt:
    return BankPrompt(
        id=row.id,
        bank=row.bank,
        messages=[dict(m) for m in row.messages],
        tags=list(row.tags),
        split=row.split,
        source=row.source,
        created=row.created,
    )


def assignment_record(row: AssignmentRow, prompt: BankPromptRow) -> Assignment:
    return Assignment(
        id=row.id,
        bank_prompt=bank_prompt_record(prompt),
        annotator_id=row.annotator_id,
        status=row.status,
        assigned=row.assigned,
        completed=row.completed,
        round=row.round,
    )
