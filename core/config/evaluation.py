"""The eval section: stage-by-stage evaluation (``./launch.sh eval``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    """Stage-by-stage evaluation (``training/evaluation/``): exam, generation, perplexity, preference."""

    k_shot: int = 5  # solved questions before each exam question (paper: 5-shot); 0-shot is reported too
    seed: int = 42  # draws the k-shot demonstrations (taken out of the exam, never scored)
    exam_max: int = 0  # questions scored per exam; 0 = every question
    qa_max: int = 0  # held-out questions answered by greedy generation; 0 = all
    general_max: int = 0  # held-out general documents for perplexity; 0 = all
    pref_max: int = 0  # held-out preference pairs, per set (objective, clinician); 0 = all
    max_new_tokens: int = 128
    max_length: int = 1024  # longest sequence scored or prompted, in tokens (also capped by the model's context)
    batch_size: int = 16
    score_by_letter: bool = False  # also report the answer-letter accuracy (options listed, letter scored)
    # real exams (C-Eval / CMExam style files, or the ChiMed exam.jsonl format), each reported on its own
    user_exam_files: list[str] = field(default_factory=list)
    use_cache: bool = True  # reuse a stage's metrics when its checkpoint, the eval sets and these settings match
    # the reward model that scores every stage's answers (results' RM score): "" = the run's own rm stage, if
    # it has one; a run id = that run's rm stage (one judge for runs of every method)
    reward_judge: str = ""
