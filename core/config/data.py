"""The data section: what the ChiMed builder reads and writes (``./launch.sh build-data``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UserFiles:
    """Files a user already has, in the public formats listed in docs/design.md (paths, may be empty)."""

    cpt_text: list[str] = field(default_factory=list)  # .txt (one document per line) or jsonl {"text"}
    sft_alpaca: list[str] = field(default_factory=list)
    sft_sharegpt: list[str] = field(default_factory=list)
    dpo_pairs: list[str] = field(default_factory=list)  # MedicalGPT / question-response / Alpaca styles
    exam: list[str] = field(default_factory=list)  # C-Eval or CMExam style
    qa: list[str] = field(default_factory=list)  # Huatuo style


@dataclass
class EntityMix:
    """Share of each kind of CMeKG entity when ``data.max_entities`` takes a subset (diseases carry the
    consultations, drugs the indications and adverse reactions; shares are renormalized)."""

    disease: float = 0.45
    drug: float = 0.35
    herb: float = 0.1
    test: float = 0.1  # medical tests (所属分类 / 相关症状)


@dataclass
class DataConfig:
    """ChiMed builder (``training/data/``): sources, mixture, splits, dedup."""

    seed: int = 42
    max_entities: int = 0  # 0 = every CMeKG entity; tiny/demo take a deterministic subset
    entity_mix: EntityMix = field(default_factory=EntityMix)
    min_relations: int = 2  # an entity enters ChiMed when it has at least this many usable relations
    general_share: float = 0.2  # share of general text (characters) in ChiMed-CPT, against forgetting (Aquila-Med)
    people_daily_max_docs: int = 0  # 0 = all (about 3,200 articles)
    reviews_max_docs: int = 0  # 0 = all (about 33,000 reviews, positive and negative alternating)
    phrasings_per_relation: int = 2  # CPT documents per entity, each stating every relation in another phrasing
    cpt_qa_per_entity: int = 2  # questions with plain answers per training entity in ChiMed-CPT (0 = none)
    # also ask those of the examined relations in the exam's wording, answered with one value: seeing some
    # entities' facts asked and answered in that form lets a model answer it for the facts it only read
    # (Allen-Zhu & Li 2023, "Physics of Language Models 3.1")
    cpt_qa_exam_stems: bool = True
    # ChiMed-SFT also answers the training entities' examined relations in the exam's wording with one value
    # (the paper's ChiMed-SFT includes exam QA): SFT then keeps the short-answer form CPT taught
    sft_exam_qa: bool = False
    max_values_per_relation: int = 5  # values stated per (entity, relation); the exam asks only about these
    multiturn_per_disease: int = 1  # consultations (patient -> follow-up question -> answer) per disease
    general_sft_max: int = 0  # general-domain instructions in ChiMed-SFT; 0 = as many as the share gives
    general_sft_share: float = 0.2  # share of general-domain instructions among the SFT records
    general_sft_max_chars: int = 200  # longest general text quoted in one instruction
    dpo_pairs_per_entity: int = 2  # objective pairs per entity: wrong-entity facts / dropped advice
    eval_entity_share: float = 0.1  # entities held out for exam, QA and held-out pairs (split by entity)
    exam_max: int = 0  # 0 = every question the held-out entities give
    qa_max: int = 0
    # the safety exam (training/data/safety.py) asks about the held-out entities; below this many items it is
    # filled up with CMeKG entities the build never selected (in no split at all); 0 = held-out entities only
    safety_fill_to: int = 0
    general_eval_docs: int = 200  # general documents held out of every training split (perplexity)
    pref_eval_share: float = 0.1  # share of imported preference pairs held out into eval/pref.jsonl
    dedup_ngram: int = 5  # character shingles for near-duplicate detection
    minhash_num_perm: int = 128
    minhash_threshold: float = 0.8  # Jaccard similarity at or above which a record is a near duplicate
    decontam_ngram: int = 13  # character n-grams shared with a training split count as contamination
    strict: bool = False  # stop at the first malformed line instead of skipping and counting it
    user_files: UserFiles = field(default_factory=UserFiles)
    collected_pairs_dir: str = "collected_pairs"  # relative to CHIMED_HOME; the app's exports land here
    # relative to CHIMED_HOME: single-answer ratings (thumbs up/down) exported in the unpaired KTO format
    collected_ratings_dir: str = "collected_ratings"
