"""The one typed config tree of ChiMed Arena, split by section.

Every default lives in the section classes, once. The defaults are the Qilin-Med paper's recipe (7B on GPUs); the
profiles in ``core/configs/{tiny,demo,paper}.yaml`` override what differs, and any key can be overridden on the
command line as ``section.key=value``. The CLI, the app, the training code and the tests all read the object
returned by :func:`load_config`; nobody re-declares a default.

- :mod:`core.config.loading`: profiles, overrides and the type checks of every value;
- :mod:`core.config.tree`: the ``Config`` class, one field per section (the stages' sections from the registry);
- :mod:`core.config.data`, :mod:`core.stages` (the stages' settings and the shared ``train`` and ``align``),
  :mod:`core.config.evaluation`, :mod:`core.config.store`, :mod:`core.config.app`: the sections.
"""

from core.config.app import (
    ENDPOINT_NAME,
    INTERIM_RESULTS,
    LEAK_TERMS,
    MAX_STOP_STRINGS,
    AppConfig,
    DecodingConfig,
    EndpointConfig,
    StudyConfig,
    check_endpoints,
    check_interim_results,
    url_without_secrets,
)
from core.config.data import DataConfig, EntityMix, UserFiles
from core.config.evaluation import EvalConfig
from core.config.loading import CONFIG_DIR, PROFILES, config_from_dict, load_config, parse_overrides
from core.config.store import (
    AGGREGATES,
    MIN_VERDICT_RESAMPLES,
    AccountsConfig,
    StoreConfig,
    check_aggregate,
    check_verdict_resamples,
)
from core.config.tree import Config, config_class
from core.stages import (
    DPO_LOSSES,
    LM_HEAD_LOSS,
    AlignConfig,
    AlignSchedule,
    CptConfig,
    DpoConfig,
    GrpoConfig,
    KtoConfig,
    LoraConfig,
    ModelConfig,
    OrpoConfig,
    RmConfig,
    SftConfig,
    SimpoConfig,
    TrainConfig,
    TrainingSchedule,
    TrlSchedule,
    check_align_method,
    check_dpo_loss,
    check_kto_batch,
    check_label_smoothing,
    check_lm_head_loss,
    check_lr_scheduler,
)

__all__ = [
    "AGGREGATES",
    "AccountsConfig",
    "AlignConfig",
    "AlignSchedule",
    "AppConfig",
    "CONFIG_DIR",
    "Config",
    "CptConfig",
    "DPO_LOSSES",
    "DataConfig",
    "DecodingConfig",
    "DpoConfig",
    "ENDPOINT_NAME",
    "EndpointConfig",
    "EntityMix",
    "EvalConfig",
    "GrpoConfig",
    "INTERIM_RESULTS",
    "KtoConfig",
    "LEAK_TERMS",
    "LM_HEAD_LOSS",
    "LoraConfig",
    "MAX_STOP_STRINGS",
    "MIN_VERDICT_RESAMPLES",
    "ModelConfig",
    "OrpoConfig",
    "PROFILES",
    "RmConfig",
    "SftConfig",
    "SimpoConfig",
    "StoreConfig",
    "StudyConfig",
    "TrainConfig",
    "TrainingSchedule",
    "TrlSchedule",
    "UserFiles",
    "check_aggregate",
    "check_align_method",
    "check_dpo_loss",
    "check_endpoints",
    "check_interim_results",
    "check_kto_batch",
    "check_label_smoothing",
    "check_lm_head_loss",
    "check_lr_scheduler",
    "check_verdict_resamples",
    "config_class",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "url_without_secrets",
]
