"""Plain dataclasses that go in and out of the preference store.

No ORM object ever leaves ``preference_store``: the app, the CLI and training build the ``...In``
records and receive the frozen ``...Out`` records below. Panels are labelled ``A``, ``B``, ``C``,
``D`` in the order they were shown; a judgment refers to answers by these labels.

Times are timezone-aware UTC ``datetime`` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

PANEL_LABELS = ("A", "B", "C", "D")
MIN_CONTESTANTS, MAX_CONTESTANTS = 2, 4
ROLES = ("annotator", "admin")
CHOICES = ("A", "B", "tie", "both_bad")  # pairwise votes on a two-panel comparison
JUDGMENT_KINDS = ("pairwise", "ranking", "correction")
SPLITS = ("train", "heldout")
SCORE_RANGE = (1, 5)  # every criterion of a guideline is scored 1-5 (5 = best)


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    role: str  # "annotator" | "admin"
    created: datetime
    can_login: bool  # False for the local "demo" annotator, which has no password, and for a disabled account
    disabled: bool = False  # ./launch.sh add-annotator NAME --disable
    password_weak: bool | None = None  # fails the password policy; None = not checked since migration 0006

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Checkpoint:
    id: str  # "<run_id>/<stage>"
    run_id: str
    stage: str  # base | cpt | sft | dpo
    registered: datetime


@dataclass
class ResponseIn:
    """One contestant's answer, as generated for one panel."""

    checkpoint_id: str  # "<run_id>/<stage>", must be registered
    text: str  # may be empty (a model can say nothing); at most store.max_text_chars
    decoding: dict = field(default_factory=dict)  # temperature, top_p, max_new_tokens, ...
    seed: int | None = None
    latency_s: float | None = None  # wall time of the whole answer
    n_tokens: int | None = None  # generated tokens
    # how it was served: {"mode": "exact"}, or {"mode": "delta", "bits": 8, "device": "cpu", "dtype": "float32"}
    # for a stage served as its parent plus a quantised difference; None = not said
    serving: dict | None = None
    # model, company or checkpoint names the answer gives away, found at generation time ([] = none);
    # None = not checked
    leaks: list[str] | None = None
    # the arena's contraindication warnings for this answer, each citing the CMeKG entry ([] = none);
    # None = not checked (training/data/safety_check.py, docs/safety.md)
    warnings: list[str] | None = None


@dataclass
class ComparisonIn:
    """One prompt (with the conversation so far) answered by 2-4 checkpoints.

    ``messages`` is the conversation as it should appear in the DPO prompt: earlier turns, then the
    user's new message last (``[{"role": "user"|"assistant"|"system", "content": str}, ...]``).
    ``responses`` are in the order the panels were shown (A, B, C, D), so the stored panel order is
    exactly what the clinician saw (blind mode shuffles it before calling this).
    """

    annotator_id: int
    messages: list[dict]
    responses: list[ResponseIn]
    conversation_id: str | None = None  # None starts a new conversation
    blind: bool = True
    # a prompt from the bank asked through the annotator's queue: its bank prompt and assignment
    bank_prompt_id: str | None = None
    assignment_id: str | None = None


@dataclass(frozen=True)
class ResponseOut:
    id: str
    label: str  # "A".."D": the panel it was shown in
    panel: int  # 0-based panel position
    checkpoint_id: str
    text: str
    decoding: dict
    seed: int | None
    latency_s: float | None
    n_tokens: int | None
    serving: dict | None = None  # as given in ResponseIn.serving; None for answers stored without it
    leaks: list[str] | None = None  # as given in ResponseIn.leaks; None = not checked
    warnings: list[str] | None = None  # as given in ResponseIn.warnings; None = not checked


@dataclass(frozen=True)
class ComparisonOut:
    id: str
    conversation_id: str
    annotator_id: int
    messages: list[dict]
    blind: bool
    created: datetime
    responses: tuple[ResponseOut, ...]  # in panel order
    bank_prompt_id: str | None = None
    assignment_id: str | None = None
    # set when the queue resolved the prompt without a clinician (adaptive allocation: the two answers are the
    # same text), saying why; nobody is asked to judge it, and no vote is recorded
    resolved: str | None = None

    def response(self, label: str) -> ResponseOut:
        """The answer shown in panel ``label`` ("A".."D")."""
        for r in self.responses:
            if r.label == label:
                return r
        raise KeyError(label)

    @property
    def reveal(self) -> dict[str, str]:
        """Panel label -> checkpoint id, for showing the names after a blind judgment."""
        return {r.label: r.checkpoint_id for r in self.responses}


@dataclass
class JudgmentIn:
    """A clinician's judgment of one comparison: exactly one of ``choice``, ``ranking``, ``correction``.

    - ``choice``: "A" | "B" | "tie" | "both_bad", for a comparison with exactly two panels.
    - ``ranking``: panel label -> place (1 = best); every panel once, places exactly 1..n.
    - ``correction``: a better answer written by the clinician; chosen over every model answer.

    One live judgment per annotator and comparison: a second one is refused ("already judged; ..."), unless
    ``revise``: then it replaces the live one, which stays in the store as history (superseded), and only the
    newest makes pairs and counts in the leaderboard.

    ``client_id`` makes a submit idempotent: submitting the same ``client_id`` again returns the
    stored judgment (``duplicate=True``) and writes nothing. ``scores`` maps panel labels to
    {criterion key: 1-5} for those answers (any subset of panels; the keys are the criteria of the
    guideline in force). ``guideline_version`` None = the version in force when it is stored.
    """

    comparison_id: str
    annotator_id: int
    client_id: str | None = None  # None = a fresh id (no idempotency)
    choice: str | None = None
    ranking: dict[str, int] | None = None
    correction: str | None = None
    reason: str | None = None
    scores: dict[str, dict[str, int]] = field(default_factory=dict)
    guideline_version: int | None = None
    revise: bool = False  # replace this annotator's live judgment of the comparison (kept as history)


@dataclass(frozen=True)
class JudgmentOut:
    id: str
    client_id: str
    comparison_id: str
    annotator_id: int
    kind: str  # pairwise | ranking | correction
    choice: str | None
    ranking: dict[str, int] | None
    correction: str | None
    reason: str | None
    scores: dict[str, dict[str, int]]  # panel label -> criterion -> 1-5
    created: datetime
    pair_ids: tuple[str, ...]  # the DPO pairs it made, sorted (none for tie / both_bad)
    duplicate: bool = False  # True when this client_id had already been stored
    guideline_version: int | None = None
    superseded_by: str | None = None  # the judgment that replaced it (None = live)
    superseded_why: str | None = None  # "revised" (an explicit revise) | "duplicate" (resolved by migration 0005)


@dataclass(frozen=True)
class PairOut:
    """One preference pair derived from a judgment (chosen over rejected, same prompt)."""

    id: str
    judgment_id: str
    comparison_id: str
    annotator_id: int
    prompt: list[dict]
    chosen: str
    rejected: str
    chosen_checkpoint: str | None  # None: the chosen answer is the clinician's correction
    rejected_checkpoint: str
    created: datetime
    chosen_serving: dict | None = None  # how each answer was served (ResponseOut.serving); None for a correction
    rejected_serving: dict | None = None


@dataclass(frozen=True)
class StoreCounts:
    annotators: int
    checkpoints: int
    conversations: int
    comparisons: int
    judgments: int
    judgments_by_kind: dict[str, int]
    pairs: int
    exported_pairs: int
    consumed_pairs: int
    ratings: int = 0  # single-answer ratings (thumbs up / down)
    bank_prompts: int = 0
    assignments_done: int = 0  # bank prompts judged through a queue (a late judgment not counted twice)


@dataclass(frozen=True)
class AnnotatorCounts:
    """One annotator's own work (what the Data tab shows an annotator; nothing about anyone else)."""

    comparisons: int
    judgments: int
    judgments_by_kind: dict[str, int]
    pairs: int
    ratings: int
    assignments_done: int


@dataclass(frozen=True)
class CheckpointRating:
    checkpoint_id: str
    rating: float  # Bradley-Terry strength on the Elo scale (1000 = average; +400 = 10:1 odds)
    ci95: tuple[float, float]  # 95% interval (bootstrap; Wald for the length-controlled ratings)
    battles: int  # model-vs-model comparisons it took part in (a ranking of n gives n-1 per model)
    wins: int
    losses: int
    ties: int  # tie and both-bad, each counted as half a win
    provisional: bool = False  # fewer than store.provisional_battles battles: the rating may still move a lot


@dataclass(frozen=True)
class KindAgreement:
    """Agreement among annotators for one kind of verdict on the shared bank prompts.

    Units (what two annotators can agree on), always on the same bank prompt with the same contestants
    (the same set of checkpoints; panels are shuffled per annotator, so units are keyed by checkpoint):
    ``pairwise``: the pair of checkpoints, nominal value first better / second better / tie (both bad
    = tie); ``ranking``: one checkpoint, ordinal value its place; ``scores``: one checkpoint and
    criterion, ordinal value 1-5.
    """

    kind: str  # pairwise | ranking | scores
    level: str  # nominal | ordinal (Krippendorff's level of measurement)
    units: int  # units with values from two or more annotators
    annotators: int  # annotators with a value in such a unit
    alpha: float | None  # Krippendorff's alpha; None = fewer than 2 such units' values or no variation at all
    percent: float | None  # mean over units of the share of annotator pairs giving the same value


@dataclass(frozen=True)
class AnnotatorAgreement:
    """One annotator against the others, on the units they share with at least one other annotator."""

    annotator_id: int
    name: str
    units: int  # shared units (all kinds)
    percent: float | None  # share of (this annotator, another annotator) value pairs that are equal
    alpha: dict[str, float | None]  # kind -> Krippendorff's alpha over the units this annotator coded


@dataclass(frozen=True)
class Agreement:
    """Inter-annotator agreement on the bank prompts judged by more than one annotator with the same contestants.

    ``comparisons``, ``items``, ``percent`` and ``fleiss_kappa`` are about the pairwise verdicts (votes); the
    alpha of every kind is in ``by_kind``, each annotator against the others in ``annotators``.
    """

    comparisons: int  # bank prompts (with the same contestants) with pairwise votes from >1 annotator
    items: int  # (prompt, checkpoint pair) units with >1 annotator's vote
    percent: float | None  # mean over items of the share of annotator pairs with the same verdict (better/worse/tie)
    fleiss_kappa: float | None  # chance-corrected (Fleiss, unequal raters per item)
    by_kind: dict[str, KindAgreement] = field(default_factory=dict)  # pairwise | ranking | scores
    criteria_alpha: dict[str, float | None] = field(default_factory=dict)  # criterion -> ordinal alpha of its scores
    annotators: list[AnnotatorAgreement] = field(default_factory=list)  # by annotator id

    @property
    def alpha(self) -> float | None:
        """Krippendorff's alpha of the pairwise votes (nominal)."""
        kind = self.by_kind.get("pairwise")
        return kind.alpha if kind else None


@dataclass(frozen=True)
class LengthControlledRatings:
    """Bradley-Terry with the answers' length difference as a covariate (Chatbot Arena's style control).

    ``ratings`` are what each checkpoint would rate if its answers were as long as its opponents'; the
    length coefficient is the change in log-odds of winning per standard deviation of the normalised
    length difference (len_a - len_b) / (len_a + len_b), in characters.
    """

    ratings: list[CheckpointRating]  # best first; 95% Wald intervals
    length_coefficient: float | None  # None = no battles
    length_ci95: tuple[float, float] | None
    battles: int


@dataclass(frozen=True)
class PositionBias:
    """How the panel position affects verdicts: without bias panel A wins half the decided votes."""

    decided_votes: int  # pairwise votes for A or B (ties and both-bad left out)
    a_wins: int
    a_share: float | None  # a_wins / decided_votes
    a_ci95: tuple[float, float] | None  # Wilson 95% interval
    rankings: int
    first_place: dict[str, float]  # panel label -> share of the rankings showing it that placed it first
    first_place_expected: dict[str, float]  # that share without position bias (1 / number of panels, averaged)


@dataclass(frozen=True)
class AnnotatorScreen:
    """One annotator's agreement with the leave-one-out consensus of the others (the outlier screen)."""

    annotator_id: int
    name: str
    units: int  # shared units where the other annotators have a consensus (a unique most common value)
    agreed: int  # of those, where this annotator gave the consensus value
    rate: float | None  # agreed / units
    expected: float | None  # the other annotators' rate of agreement with their own consensus
    p_value: float | None  # one-sided binomial P(agreeing this little or less | expected rate)
    outlier: bool  # p_value below store.outlier_p_value


@dataclass(frozen=True)
class Leaderboard:
    ratings: list[CheckpointRating]  # best first
    win_rate: dict[str, dict[str, float]]  # row beats column (ties half); only pairs that met
    battles: dict[str, dict[str, int]]  # row vs column counts
    criteria: dict[str, dict[str, float]]  # checkpoint -> criterion -> mean 1-5 score
    criteria_n: dict[str, dict[str, int]]  # checkpoint -> criterion -> number of scores
    agreement: Agreement
    judgments: int
    # criterion -> Bradley-Terry ratings from the 1-5 scores within each judgment (higher wins, equal ties)
    criterion_ratings: dict[str, list[CheckpointRating]] = field(default_factory=dict)
    length_controlled: LengthControlledRatings | None = None
    position_bias: PositionBias | None = None
    screen: list[AnnotatorScreen] = field(default_factory=list)  # every annotator with shared units, by id
    leaked_battles: int = 0  # battles where an answer names a model (left out of the ratings if leaked_excluded)
    leaked_excluded: bool = False
    bank_only: bool = False  # only comparisons on bank prompts
    provisional_battles: int = 0  # the threshold below which a rating is provisional
    # judgments made after the names were shown (an admin's blind=False, or later turns of a revealed
    # conversation): left out of everything above unless unblinded_admitted (store.admit_unblinded)
    unblinded_judgments: int = 0
    unblinded_admitted: bool = False
    # checkpoint -> (answers with a contraindication warning, answers checked for one) (docs/safety.md)
    warnings: dict[str, tuple[int, int]] = field(default_factory=dict)
    # every two checkpoints that met on bank prompts, the higher-rated first: the anytime-valid decision on
    # whether the first wins more than half of their battles (the test compare-runs uses)
    pairwise: list[PairwiseDecision] = field(default_factory=list)

    @property
    def outliers(self) -> list[AnnotatorScreen]:
        """The annotators the screen lists (agreeing with the consensus far less than the others)."""
        return [s for s in self.screen if s.outlier]


@dataclass(frozen=True)
class PairwiseDecision:
    """The leaderboard's anytime-valid decision on two checkpoints (:func:`~preference_store.statistics.
    run_comparison.pairwise_decisions`): ``first`` (the higher-rated) better, worse, the same within ``margin``, or
    undecided, from its win rate over the bank prompts where the two met, valid however often it is read."""

    first: str
    second: str
    verdict: str  # better | worse | same | undecided (first against second)
    win_rate: float | None  # the first's mean score over the complete prompts (None: none complete yet)
    interval: tuple[float, float]  # the win rate's anytime interval now (level 1 - alpha)
    units: int  # complete prompts
    judgments: int  # battles of the two on bank prompts
    alpha: float
    margin: float
    decided_after: int | None  # the battles counted when the verdict was first reached (None: undecided)
    decided_interval: tuple[float, float] | None
    summary: str  # "better: A against B, decided after N judgments (...)"


@dataclass(frozen=True)
class RunComparison:
    """Is the newer run better than the older one on the shared bank prompts? (bootstrap over prompts)

    ``difference`` is the new checkpoint's share of battles won minus the old one's (ties half each),
    in [-1, 1]. With study.decisions fixed the verdict is "better" / "worse" when its 95% interval excludes 0,
    "same" when it does not, and "not enough judgments" when fewer than store.run_comparison_min_prompts bank
    prompts have a battle of the two. With anytime (the default) it is the confidence sequence's: better, worse,
    same within the margin, or undecided, valid however often it is read; the bootstrap fields are then None. ``dataclasses.asdict`` gives the plain dict a run's results hold.
    """

    new_run: str
    old_run: str
    stage: str | None  # the stage compared (None: the runs share none)
    new_checkpoint: str | None
    old_checkpoint: str | None
    split: str | None  # train | heldout | None (all bank prompts)
    verdict: str  # better | same | worse | not enough judgments; anytime: also undecided
    difference: float | None
    ci95: tuple[float, float] | None
    p_new_better: float | None  # share of bootstrap resamples where the new checkpoint won more (ties half)
    prompts: int  # bank prompts with at least one battle of the two
    battles: int
    wins: int  # of the new checkpoint
    losses: int
    ties: int
    rounds: int  # bootstrap resamples
    summary: str  # one line saying all of it
    # of the ``prompts`` counted, how many had pairs the new run trained on (its wins there may be recall,
    # not a better model: the held-out split has none)
    trained_on: int = 0
    # battles of the two left out because an answer names a model (store.exclude_leaked_battles; app/leaks.py)
    leaked_battles: int = 0
    # how the verdict was decided (study.decisions): fixed = the bootstrap above; anytime = the confidence
    # sequence for the win rate (:mod:`preference_store.statistics.sequential`), whose fields follow
    decisions: str = "fixed"
    alpha: float | None = None
    margin: float | None = None  # "same": the whole interval within 0.5 ± margin
    win_rate: float | None = None  # the mean win share over the complete prompts (ties half)
    interval: tuple[float, float] | None = None  # the win rate's anytime interval now (level 1 - alpha)
    units: int = 0  # prompts complete (their k battles in) in the sequence
    decided_after: int | None = None  # judgments of the two when the verdict was first reached (None: undecided)
    decided_interval: tuple[float, float] | None = None  # the interval then

    def __str__(self) -> str:
        return self.summary


@dataclass(frozen=True)
class ExportSummary:
    """What one export wrote (``path`` is None when there was nothing new to export)."""

    path: Path | None
    sha256: str | None
    pair_ids: list[str]  # written, in file order
    train: int
    heldout: int
    duplicates: int  # pairs dropped because their (prompt, chosen, rejected) was already exported
    redactions: dict[str, int]  # kind (phone, id_card, email, name) -> count
    export_id: int | None = None
    same_text: int = 0  # pairs left out because chosen and rejected are the same text
    empty_answer: int = 0  # pairs left out because one of their answers is empty (logged as handled)
    low_agreement: int = 0  # pairs of bank prompts left out because their agreement is below store.min_agreement
    unblinded: int = 0  # pairs of unblinded comparisons left out (store.admit_unblinded is off)
    outvoted: int = 0  # pairs left out because most votes on the same prompt and answers went the other way
    split_votes: int = 0  # pairs left out because no direction had what store.aggregate asks (a split or tied vote)
    aggregate: str = "majority"  # the store.aggregate the export used
    marked: bool = True  # logged as handled (False: an export for inspection, which the loop's export does not skip)


# --- the annotation study: guideline, prompt bank, queue, single-answer ratings ---------------------


@dataclass(frozen=True)
class Criterion:
    """One 1-5 criterion of a guideline (``key`` is what scores are stored under)."""

    key: str  # lower-case ascii, e.g. "safety"
    name: str  # shown on the scoring radios, e.g. "安全性 safety"
    description: str = ""


@dataclass(frozen=True)
class Guideline:
    """One version of the annotation guideline: markdown text and its criteria in priority order."""

    version: int
    text: str
    criteria: tuple[Criterion, ...]
    author_id: int | None  # None = the built-in default
    created: datetime

    @property
    def criterion_keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.criteria)


@dataclass(frozen=True)
class BankPrompt:
    """A prompt of the shared bank: the conversation so far with the prompt last (a user message)."""

    id: str
    bank: str
    messages: list[dict]
    tags: list[str]
    split: str  # train | heldout: the export split of the pairs judged on it
    source: str  # FILE:LINE
    created: datetime

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class BankImportSummary:
    """What importing a bank file did: nothing half-written, every line accounted for."""

    bank: str
    imported: int
    duplicates: int  # prompts already in the bank (or twice in the file): imported once
    errors: list[str]  # "FILE:LINE: reason" for each malformed line (the rest were imported)


@dataclass(frozen=True)
class Assignment:
    """A bank prompt given to one annotator."""

    id: str
    bank_prompt: BankPrompt
    annotator_id: int
    status: str  # open | done | expired
    assigned: datetime
    completed: datetime | None
    round: int = 1  # the queue round (see PreferenceStore.start_queue_round)
    # the two contestants the queue chose for this prompt in a round of 3-4 under adaptive allocation (active
    # sampling: answer it with exactly these); () = the round's contestants, or the annotator's choice
    contestants: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueProgress:
    """An annotator's queue: how many bank prompts they have judged of how many they can get."""

    done: int
    total: int  # done + still available to them (open assignments and prompts with a free place)

    def __str__(self) -> str:
        return f"{self.done} / {self.total}"


ROUND_SPLITS = ("heldout", "train", "all")  # which bank prompts a queue round hands out


@dataclass(frozen=True)
class QueueRound:
    """A queue round as the admin defined it (``queue-round``): which bank prompts it hands out (``split``),
    and, when ``contestants`` is not empty, the 2-4 checkpoints that answer every queue prompt of it for every
    annotator (none: each annotator chooses, as in round 1). ``blind``: nobody, admins included, judges it
    with the names shown. A round is *open* (a study is running: interim results are kept from annotators,
    ``study.interim_results``) from its start until the admin closes it (``closed`` set)."""

    number: int
    contestants: tuple[str, ...] = ()
    split: str = "all"
    blind: bool = False
    started: datetime | None = None  # None: round 1 before any queue-round (never defined, never open)
    closed: datetime | None = None
    # the round's question decided (study.decisions anytime, a round of two runs' checkpoints of one stage): its
    # queue hands out nothing more; the one-line summary of the decision ("better: ... decided after N judgments")
    decided: str | None = None
    allocation: str | None = None  # uniform | adaptive, fixed when the round starts (None: study.allocation)

    @property
    def is_open(self) -> bool:
        return self.started is not None and self.closed is None


@dataclass
class RatingIn:
    """A thumbs up (``label`` True) or down on one answer of a comparison, instead of comparing."""

    comparison_id: str
    annotator_id: int
    label: str  # the panel "A".."D" rated
    up: bool
    correction: str | None = None  # a better answer (exported as a desirable completion)
    reason: str | None = None
    client_id: str | None = None  # None = a fresh id (no idempotency)
    guideline_version: int | None = None  # None = the version in force
    revise: bool = False  # replace this annotator's live rating of this answer (kept as history)


@dataclass(frozen=True)
class RatingOut:
    id: str
    client_id: str
    comparison_id: str
    annotator_id: int
    label: str
    checkpoint_id: str
    up: bool
    correction: str | None
    reason: str | None
    guideline_version: int | None
    created: datetime
    duplicate: bool = False
    superseded_by: str | None = None  # the rating that replaced it (None = live)
    superseded_why: str | None = None  # "revised" | "duplicate"


@dataclass(frozen=True)
class RatingsExportSummary:
    """What one export of single-answer ratings wrote (``path`` None when there was nothing new)."""

    path: Path | None
    sha256: str | None
    rating_ids: list[str]  # exported, in file order
    records: int  # lines written: one per rating, plus one per correction (a desirable completion)
    train: int  # records per split
    heldout: int
    redactions: dict[str, int]  # kind (phone, id_card, email, name) -> count
    export_id: int | None = None
    empty_answers: int = 0  # rated answers left out because they are empty (the rating is logged, a correction kept)


@dataclass(frozen=True)
class ResolvedTie:
    """A bank prompt the queue resolved as a tie without a clinician (adaptive allocation): in a round of two
    contestants, their two answers were the same text after whitespace normalisation. Kept in ``store_meta``
    beside the round's definition, never as a judgment or a vote."""

    round: int
    bank_prompt_id: str
    comparison_id: str
    assignment_id: str
    rule: str
    resolved: datetime


@dataclass(frozen=True)
class AnnotatorReliability:
    """One annotator's Dawid-Skene estimate (:mod:`preference_store.statistics.reliability`): the probability that
    their pairwise verdict is the true one, from ``overlap_units`` units shared with another annotator, and their
    confusion matrix (rows: the truth, columns: their verdict; first better, second better, tie)."""

    annotator_id: int
    name: str
    overlap_units: int
    reliability: float
    confusion: tuple[tuple[float, ...], ...]
