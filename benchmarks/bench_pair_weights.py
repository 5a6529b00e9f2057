"""Pair weights (``align.pair_weights``): DPO with and without agreement weights, on clinician votes with a share
of random ones planted among them, run through the real store.

    CHIMED_HOME=DIR .venv/bin/python benchmarks/bench_pair_weights.py --run ID [--profile tiny] [--seeds 3]
        [--prompts 120] [--heldout 0.25] [--annotators 6] [--careless 3] [--k 3] [--steps 40] [KEY=VALUE ...]

``ID`` is a run with a finished sft stage; both DPO runs of a seed start from it (``train-all --from align
--resume-run ID``). The truth is the data's: ChiMed-DPO's objective pairs (the CMeKG-grounded answer chosen, an
answer with another entity's facts or without the advice to see a doctor rejected) of ``--prompts`` prompts,
drawn per seed. Each seed is a fresh store (``CHIMED_HOME``'s database and collected-pairs folders are replaced)
with those prompts as a bank (a share ``--heldout`` of them held out) and a blind queue round of two contestants,
uniform allocation with ``store.annotators_per_prompt`` = ``--k``: on each prompt one contestant (drawn per
prompt) gives the true chosen answer and the other the true rejected one, shown in a random order. Of
``--annotators`` scripted clinicians, ``--careless`` vote A or B at random; the others prefer the true chosen
answer. They take their assignments from the queue in a random order per pass until nobody gets one, then
``export-prefs`` (the loop's export: majority aggregation, Dawid-Skene weights) feeds the data, rebuilt with
``data.dpo_pairs_per_entity=0`` so that ChiMed-DPO holds the clinicians' pairs only. DPO then trains twice from
the same SFT with the same seed and data order, ``align.pair_weights: none`` and ``agreement``
(``dpo.max_steps=--steps``; trailing ``KEY=VALUE`` config overrides apply to both, e.g. ``dpo.beta=1.0``).

Measured per run: preference accuracy on the seed's held-out prompts with their true direction (the share of
pairs whose implicit DPO reward, policy vs SFT log-ratio, ranks the true chosen answer first;
training/evaluation/preference.py) and the exam's k-shot accuracy (training/evaluation/exam.py), each with a
Wilson 95% interval, and the mean margin of that reward over beta on the held-out pairs (chosen minus rejected
log-ratio, in nats: a finer reading of the same pairs); also the exported train pairs, how many point the wrong
way, and their mean weights. The pooled rows add the held-out pairs of all seeds (different prompts per seed).
Writes into CHIMED_HOME (the store, the collected pairs, the data and runs ``pw-<seed>-<setting>``): use a copy
of a home. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from argon2 import PasswordHasher  # noqa: E402

from benchmarks.bench_allocation import work_the_queue  # noqa: E402
from chimed import export_clinician_pairs  # noqa: E402
from core.config import load_config  # noqa: E402
from core.files import read_jsonl  # noqa: E402
from core.registry import is_chat_stage  # noqa: E402
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn  # noqa: E402
from preference_store.repository import PreferenceStore, accounts  # noqa: E402
from training.data.build import build_chimed  # noqa: E402
from training.data.dpo import OBJECTIVE_SOURCE  # noqa: E402
from training.evaluation.evaluate import load_eval_sets  # noqa: E402
from training.evaluation.exam import score_exam  # noqa: E402
from training.evaluation.metrics import wilson_interval  # noqa: E402
from training.evaluation.preference import implicit_reward_accuracy, pair_logprobs  # noqa: E402
from training.manifest import run_dir  # noqa: E402
from training.modeling import load_stage  # noqa: E402
from training.pipeline import train_all  # noqa: E402

CONTESTANTS = ("left", "right")  # two registered "runs" whose dpo stage answers; which one is right varies by prompt
SETTINGS = ("none", "agreement")


def truth_pairs(profile: str) -> list[dict]:
    """ChiMed-DPO's objective pairs of the home's data (built with the profile's settings first if the data holds
    none, e.g. after an earlier run of this script rebuilt it with the clinicians' pairs only)."""
    cfg = load_config(profile)
    pairs = [p for p in read_jsonl(cfg.data_dir / "dpo.jsonl") if p.get("source") == OBJECTIVE_SOURCE]
    if not pairs:
        build_chimed(cfg)
        pairs = [p for p in read_jsonl(cfg.data_dir / "dpo.jsonl") if p.get("source") == OBJECTIVE_SOURCE]
    return [p for p in pairs if p["prompt"][-1]["role"] == "user"]


def fresh_store(cfg) -> None:
    """This seed's empty store and collected-pairs folders (the home is the benchmark's copy)."""
    path = Path(cfg.database_url.removeprefix("sqlite:///"))
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    for folder in (cfg.collected_pairs_dir, cfg.collected_ratings_dir):
        shutil.rmtree(folder, ignore_errors=True)


def collect_votes(cfg, pairs: list[dict], heldout: set[int], args, seed: int) -> dict:
    """The scripted study of one seed through the store and its queue; returns vote counts."""
    rng = random.Random(f"votes:{seed}")
    bank = cfg.home / "bench_pair_weights_bank.jsonl"
    bank.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": p["prompt"][-1]["content"],
                    "history": p["prompt"][:-1],
                    "split": "heldout" if i in heldout else "train",
                },
                ensure_ascii=False,
            )
            + "\n"
            for i, p in enumerate(pairs)
        ),
        encoding="utf-8",
    )
    votes = {"truthful": 0, "careless": 0, "careless_wrong": 0}
    with PreferenceStore.from_config(cfg) as store:
        for run in CONTESTANTS:
            store.register_checkpoints(run, ["dpo"])
        store.import_bank(bank)
        index = {p["prompt"][-1]["content"]: i for i, p in enumerate(pairs)}
        prompt_of = {b.id: index[b.messages[-1]["content"]] for b in store.bank_prompts()}
        checkpoints = [f"{run}/dpo" for run in CONTESTANTS]
        store.start_queue_round(None, checkpoints, blind=True, allocation="uniform")
        clinicians = [store.add_annotator(f"dr_{i}", "a-long-test-password").id for i in range(args.annotators)]
        careless = set(random.Random(f"careless:{seed}").sample(clinicians, args.careless))

        def take(annotator: int, assignment) -> None:
            i = prompt_of[assignment.bank_prompt.id]
            # one contestant answers with the true chosen answer, drawn per prompt; panels in a random order
            right = random.Random(f"right:{seed}:{i}").choice(checkpoints)
            answers = {
                right: pairs[i]["chosen"][0]["content"],
                ({*checkpoints} - {right}).pop(): pairs[i]["rejected"][0]["content"],
            }
            shown = list(checkpoints)
            rng.shuffle(shown)
            comparison = store.record_comparison(
                ComparisonIn(
                    annotator,
                    assignment.bank_prompt.messages,
                    [ResponseIn(c, answers[c]) for c in shown],
                    bank_prompt_id=assignment.bank_prompt.id,
                    assignment_id=assignment.id,
                )
            )
            truth = "AB"[shown.index(right)]
            if annotator in careless:
                choice = rng.choice("AB")
                votes["careless"] += 1
                votes["careless_wrong"] += choice != truth
            else:
                choice = truth
                votes["truthful"] += 1
            store.submit_judgment(JudgmentIn(comparison.id, annotator, choice=choice))

        work_the_queue(store, clinicians, rng, take)
    export_clinician_pairs(cfg)
    return votes


def exported_train_pairs(cfg, pairs: list[dict]) -> dict:
    """Of the exported train pairs: how many, how many point the wrong way, the mean weight of each kind."""
    chosen_of = {p["prompt"][-1]["content"]: p["chosen"][0]["content"] for p in pairs}
    right, wrong = [], []
    for path in sorted(cfg.collected_pairs_dir.glob("*.jsonl")):
        for p in read_jsonl(path):
            if p["split"] != "train":
                continue
            ok = p["chosen"][0]["content"] == chosen_of[p["prompt"][-1]["content"]]
            (right if ok else wrong).append(1.0 if p.get("weight") is None else p["weight"])
    mean = lambda ws: round(sum(ws) / len(ws), 3) if ws else None  # noqa: E731
    return {"pairs": len(right) + len(wrong), "wrong": len(wrong), "w_right": mean(right), "w_wrong": mean(wrong)}


def measure(cfg, run_id: str, heldout_pairs: list[dict], reference: list[dict], exam) -> dict:
    """Held-out preference accuracy (implicit reward, true direction) and exam accuracy of the run's dpo stage."""
    e = cfg.eval
    model, tokenizer = load_stage(run_dir(cfg, run_id), "dpo")
    max_length = min(e.max_length, model.config.max_position_embeddings or e.max_length)
    chat = is_chat_stage("dpo")
    policy = pair_logprobs(model, tokenizer, heldout_pairs, chat, e.batch_size, max_length, desc=f"{run_id} pairs")
    right = round(implicit_reward_accuracy(policy, reference) * len(policy))
    # the implicit reward's margin over beta: (log-ratio of the chosen answer) - (log-ratio of the rejected one)
    margins = [(p["chosen"] - r["chosen"]) - (p["rejected"] - r["rejected"]) for p, r in zip(policy, reference)]
    shots = score_exam(model, tokenizer, exam.items, exam.demos, chat, e.batch_size, max_length, desc=f"{run_id} exam")
    return {
        "pref_right": right,
        "pref_n": len(policy),
        "margin": sum(margins) / len(margins),
        "exam_right": round(shots["acc"] * shots["n"]),
        **shots,
    }


def share(right: int, n: int) -> str:
    low, high = wilson_interval(right, n)
    return f"{100 * right / n:.1f} [{100 * low:.1f}, {100 * high:.1f}] (n={n})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run with a finished sft stage")
    parser.add_argument("--profile", default="tiny", choices=("tiny", "demo", "paper"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=120)
    parser.add_argument("--heldout", type=float, default=0.25, help="share of the bank's prompts held out")
    parser.add_argument("--annotators", type=int, default=6)
    parser.add_argument("--careless", type=int, default=3, help="annotators voting at random")
    parser.add_argument("--k", type=int, default=3, help="annotators per prompt")
    parser.add_argument("--steps", type=int, default=40, help="dpo.max_steps of each DPO run")
    parser.add_argument("overrides", nargs="*", help="config overrides for both DPO runs (KEY=VALUE)")
    args = parser.parse_args()
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)  # logins are not measured
    started = time.time()

    objective = truth_pairs(args.profile)
    overrides = [
        "data.dpo_pairs_per_entity=0",
        "align.method=dpo",
        f"store.annotators_per_prompt={args.k}",
        f"dpo.max_steps={args.steps}",
        "train.evaluate_after=false",
        *args.overrides,
    ]
    cfg = load_config(args.profile, overrides)
    sft, tokenizer = load_stage(run_dir(cfg, args.run), "sft")
    exam = load_eval_sets(load_config(args.profile)).exams[""]
    rows, pooled = [], {s: [0, 0] for s in SETTINGS}
    for seed in range(args.seeds):
        pairs = random.Random(f"prompts:{seed}").sample(objective, args.prompts)
        heldout = set(random.Random(f"heldout:{seed}").sample(range(len(pairs)), round(args.heldout * len(pairs))))
        fresh_store(cfg)
        votes = collect_votes(cfg, pairs, heldout, args, seed)
        exported = exported_train_pairs(cfg, pairs)
        heldout_pairs = [pairs[i] for i in sorted(heldout)]
        e = cfg.eval
        max_length = min(e.max_length, sft.config.max_position_embeddings or e.max_length)
        reference = pair_logprobs(sft, tokenizer, heldout_pairs, is_chat_stage("dpo"), e.batch_size, max_length)
        print(f"seed {seed}: votes {votes}; exported train pairs {exported}", flush=True)
        for setting in SETTINGS:
            run_id = f"pw-{seed}-{setting}"
            shutil.rmtree(cfg.runs_dir / run_id, ignore_errors=True)
            run_cfg = load_config(
                args.profile, [*overrides, f"align.pair_weights={setting}", f"train.seed={cfg.train.seed + seed}"]
            )
            train_all(run_cfg, from_stage="align", resume_run=args.run, run_id=run_id)
            m = measure(run_cfg, run_id, heldout_pairs, reference, exam)
            pooled[setting][0] += m["pref_right"]
            pooled[setting][1] += m["pref_n"]
            rows.append(
                f"| {seed} | {setting} | {exported['pairs']} | {exported['wrong']} | {exported['w_right']} / "
                f"{exported['w_wrong']} | {share(m['pref_right'], m['pref_n'])} | {m['margin']:+.3f} | "
                f"{share(m['exam_right'], m['n'])} |"
            )
            print(rows[-1], flush=True)

    print(
        "\n| seed | pair_weights | train pairs | wrong way | mean weight right / wrong | held-out pref acc % [95%] "
        "| mean held-out margin | exam acc % [95%] |\n|---|---|---:|---:|---|---|---:|---|"
    )
    print("\n".join(rows))
    for setting in SETTINGS:
        print(f"| pooled | {setting} | | | | {share(*pooled[setting])} | | |")
    print(f"\nwall {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
