"""The store section: the preference database, exports, aggregation of votes, and annotator accounts."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.errors import UserError


@dataclass
class AccountsConfig:
    """Annotator accounts (``store.accounts``): the password policy and the throttling of failed logins and of
    the OpenAI-compatible server's bearer tokens. docs/study.md "Accounts and the audit log" explains the numbers."""

    # NIST SP 800-63B asks for at least 8; 10 because a study account guards clinicians' data and a
    # passphrase ("four random words") is easy to type at that length. No composition rules (NIST: none).
    min_password_length: int = 10
    # failures (per account, and per client address) answered at once; after that each further try must wait
    # login_delay_s * 2^(extra failures), at most login_max_delay_s, and is refused unchecked when it comes early
    free_failures: int = 3
    login_delay_s: float = 1.0
    login_max_delay_s: float = 60.0
    # this many failures for one account from one address lock that (account, address) for lock_seconds;
    # the lock counts from the last failure, and failures older than lock_seconds are forgotten
    lock_failures: int = 10
    lock_seconds: int = 900
    # the account as a whole (every address): a short lock after many failures, so a distributed guesser is
    # slowed too, but an attacker cannot keep the owner out for long, and never from an address the owner
    # logged in from within trusted_address_days
    account_lock_failures: int = 50
    account_lock_seconds: int = 300
    trusted_address_days: int = 30
    # one address trying many accounts (password spraying): higher numbers, as a hospital's proxy or NAT may put
    # many clinicians behind one address
    address_free_failures: int = 10
    address_lock_failures: int = 30


AGGREGATES = ("majority", "all", "unanimous")


def check_aggregate(name: str, where: str) -> None:
    if name not in AGGREGATES:
        raise UserError(f"config: {where}={name!r}: choose one of {', '.join(AGGREGATES)}")


MIN_VERDICT_RESAMPLES = 2000


def check_verdict_resamples(rounds: int, where: str) -> None:
    # the ends of a 95% percentile interval are the 2.5% tails: with fewer than ~2000 resamples they rest on
    # fewer than 50 values each and move visibly between seeds, enough to flip a verdict near 0
    if rounds < MIN_VERDICT_RESAMPLES:
        raise UserError(
            f"config: {where}={rounds}: the run-vs-run verdict needs at least {MIN_VERDICT_RESAMPLES} "
            "bootstrap resamples"
        )


@dataclass
class StoreConfig:
    """Preference store (``preference_store/``): database, limits, ratings, export split."""

    database_url: str = ""  # empty = sqlite:///$CHIMED_HOME/preferences.db; CHIMED_DATABASE_URL wins
    max_text_chars: int = 8000  # longest prompt, answer, correction or reason the store accepts
    busy_timeout_ms: int = 30000  # SQLite waits this long for the write lock; writes retry up to twice that
    bootstrap_rounds: int = 1000  # resamples for the 95% intervals of the Bradley-Terry ratings
    # collected comparisons held out from DPO training (eval/pref_clinician.jsonl), chosen by prompt so
    # a comparison is never split between train and held-out; a bank prompt's own split wins over it
    heldout_share: float = 0.2
    # --- the annotation study (prompt bank, queues, agreement, vote integrity) ---
    annotators_per_prompt: int = 3  # k: each bank prompt goes to this many different annotators
    # an assignment not judged within this time is given to someone else (a late judgment is still stored)
    assignment_timeout_minutes: int = 120
    daily_judgment_cap: int = 0  # judgments (votes, rankings, corrections, ratings) per annotator per UTC day; 0 = none
    provisional_battles: int = 30  # a checkpoint's rating is marked provisional until it has this many battles
    # pairs of bank prompts whose annotators agree less than this (share agreeing with the pair) are left
    # out of the export; 0 = keep all (the agreement is written with each pair either way)
    min_agreement: float = 0.0
    # how the votes of several annotators on the same prompt and the same two answers become training pairs:
    # majority = one pair in the direction more than half of the votes took (ties count as votes), so a
    # disagreement never sends both directions into DPO; unanimous = only when every vote agrees; all = every
    # annotator's pair (both directions of a disagreement). The pair carries the counts either way
    aggregate: str = field(default="majority", metadata={"check": check_aggregate})
    exclude_leaked_battles: bool = True  # leave battles whose answers name a model out of the ratings
    # judgments made with the names shown (an admin's blind=False, or a later turn of a conversation whose names
    # were revealed) count in the leaderboard and make training pairs only when this is on: a judge who knows
    # which run answered is not a blind judge
    admit_unblinded: bool = False
    outlier_p_value: float = 0.01  # annotators agreeing with the consensus less than this chance allows are listed
    # the run-vs-run verdict needs battles of the two runs on at least this many bank prompts: a bootstrap
    # over one or two prompts has no spread and would call a single vote certain
    run_comparison_min_prompts: int = 5
    # bootstrap resamples of the run-vs-run verdict's interval (cheap: one sum per resample, not a rating fit)
    run_comparison_rounds: int = field(default=2000, metadata={"check": check_verdict_resamples})
    # store only de-identified text (:mod:`preference_store.deid.detect`): every prompt, answer, correction and reason
    # is redacted before it is written, whoever writes it (app, API, scripts). Off for the synthetic tiny/demo
    # data; the paper profile, which real clinicians use, turns it on. The app flags identifiers at entry either way.
    redact_on_entry: bool = False
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
