"""focusvit.runs: the one run layer (docs/concepts/runs.md).

- :class:`EpisodeSpec`, :class:`BackboneSpec`, :func:`episode_seed`: what a run evaluates;
- :func:`evaluate` / :func:`evaluate_many` over :class:`Runner` s: the one episode loop
  (shared per-episode work, batched tasks, resumable JSONL, sharding);
- :class:`EpisodeLog`, :class:`RunDir`: episode files and run folders with their settings record;
- :func:`check_settings`: the one "resume or refuse other settings" check;
- :func:`save_state` / :func:`load_state`: atomic, pickle-free checkpoints;
- :func:`mean_and_ci`, :class:`EvaluationResult`: the one interval formula;
- :class:`Cell`, :class:`ProbeCache`, :class:`FocusProbe`, :func:`paired`,
  :func:`validation_seed`, :func:`episode_file_name`: the study layer (``docs/study.md``).
"""

from .checkpoint import load_state, save_state
from .distributed import DistContext, shard
from .episode_data import EpisodeData, preprocessing_key
from .loop import (
    Runner,
    dataset_settings,
    evaluate,
    evaluate_many,
    make_record,
    run_one,
    run_settings,
)
from .records import (
    EpisodeLog,
    OutputWriteError,
    atomic_write_text,
    check_episode_ids,
    check_output_path,
    merge_records,
    read_episode_file,
)
from .rundir import RunDir
from .settings import (
    changed_settings,
    check_settings,
    fingerprint,
    flatten,
    to_plain,
    weights_fingerprint,
)
from .spec import BackboneSpec, EpisodeSpec, episode_seed
from .stats import EvaluationResult, format_ci, mean_and_ci
from .study import (
    Cell,
    FocusProbe,
    Paired,
    ProbeCache,
    common_episodes,
    episode_file_name,
    load_study_backbone,
    paired,
    shard_file,
    validation_seed,
)

__all__ = [
    "BackboneSpec",
    "Cell",
    "DistContext",
    "EpisodeData",
    "EpisodeLog",
    "EpisodeSpec",
    "EvaluationResult",
    "FocusProbe",
    "OutputWriteError",
    "Paired",
    "ProbeCache",
    "RunDir",
    "Runner",
    "atomic_write_text",
    "changed_settings",
    "check_episode_ids",
    "check_output_path",
    "check_settings",
    "common_episodes",
    "dataset_settings",
    "episode_file_name",
    "episode_seed",
    "evaluate",
    "evaluate_many",
    "fingerprint",
    "flatten",
    "format_ci",
    "load_state",
    "load_study_backbone",
    "make_record",
    "mean_and_ci",
    "merge_records",
    "paired",
    "preprocessing_key",
    "read_episode_file",
    "run_one",
    "run_settings",
    "save_state",
    "shard",
    "shard_file",
    "to_plain",
    "validation_seed",
    "weights_fingerprint",
]
