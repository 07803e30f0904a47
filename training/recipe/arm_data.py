"""An arm's datasets: read, split, encoded once per node, memory-mapped by every process.

Under DDP or FSDP every GPU runs the recipe. Only each node's first process reads the JSONL files,
splits the holdout, encodes the rows (`training.data.fit_to_length`, under training.long_examples)
and writes them as Arrow files (`save_to_disk`); the node's other processes wait for it
(`main_process_first`) and every process then opens those files memory-mapped (`load_from_disk`),
so a million-row arm does not cost each process gigabytes of Python lists. The files live in a
node-local folder named after the arm's output folder (`$PAIRED_FINETUNE_DATA_CACHE`, else the
temp folder), rewritten by each run.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from training.data import file_sha256, fit_to_length, load_examples
from training.experiment.events import emit

log = logging.getLogger("training.recipe")


@dataclass
class ArmData:
    train: object  # datasets.Dataset, memory-mapped
    eval: object
    eval_rows: list[dict] | None = None  # the node's first process only: per-example records
    params: dict = field(default_factory=dict)  # data.* MLflow params (the first process only)


def split_holdout(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Each arm's own eval holdout when no shared eval set is configured."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(rows) * fraction))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def cache_folder(out: Path) -> Path:
    """Where the arm's encoded data is memory-mapped from: the node's own disk (the arm folder
    may be a mounted blob), one folder per user (another's is not writable) and per arm."""
    root = os.environ.get("PAIRED_FINETUNE_DATA_CACHE") or tempfile.gettempdir()
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    return Path(root) / f"paired-finetune-data-{os.getuid()}" / key


def prepare_arm_data(t, tokenizer, arm: str, out: Path, train_file: Path,
                     eval_file: Path | None, state) -> ArmData:
    """`state`: accelerate's PartialState of this process (the same one the Trainer uses)."""
    from datasets import load_from_disk

    folder = cache_folder(out)
    eval_rows, params = None, {}
    with state.local_main_process_first():
        if state.is_local_main_process:
            # encoded afresh by every start of the arm: gone when this process ends, however it
            # ends (the other local processes' memory maps outlive the unlink)
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            eval_rows, params = _encode_to_disk(t, tokenizer, arm, train_file, eval_file, folder)
        train, eval_ = (load_from_disk(str(folder / part)) for part in ("train", "eval"))
    return ArmData(train, eval_, eval_rows, params)


def _same_as_validated(params: dict, train_file: Path, eval_file: Path | None) -> None:
    """`train run` validated the files and named the pair after their sha256: a file replaced
    since (while the other arm trains, say) is refused, never trained unchecked."""
    import json

    from training.data import DataError
    from training.experiment.pair import DATA_SHA256_ENV

    expected = json.loads(os.environ.get(DATA_SHA256_ENV) or "{}")
    changed = [f"{path}: changed since `train run` validated it (sha256 {want[:12]}..., now "
               f"{params[key][:12]}...): run `train run` again to validate and train it"
               for role, key, path in (("train", "data.train_sha256", train_file),
                                       ("eval", "data.eval_sha256", eval_file))
               if (want := expected.get(role)) and key in params and params[key] != want]
    if changed:
        raise DataError(changed)


def _encode_to_disk(t, tokenizer, arm: str, train_file: Path, eval_file: Path | None,
                    folder: Path) -> tuple[list[dict], dict]:
    from datasets import Dataset

    train_rows = load_examples(train_file)
    eval_rows = load_examples(eval_file) if eval_file else None
    params = {"data.train_sha256": file_sha256(train_file), "data.train_rows": len(train_rows)}
    if eval_rows is None:
        train_rows, eval_rows = split_holdout(train_rows, t.eval_fraction, t.seed)
        params["data.eval"] = f"holdout {t.eval_fraction} of train"
    else:
        params |= {"data.eval_sha256": file_sha256(eval_file), "data.eval_rows": len(eval_rows)}
    _same_as_validated(params, train_file, eval_file)
    # the same encoding for both arms; long examples refused, dropped or cut as the config says
    train_rows, train_enc, long_train = fit_to_length(train_rows, tokenizer, t.max_seq_length,
                                                      t.long_examples, str(train_file))
    eval_rows, eval_enc, long_eval = fit_to_length(eval_rows, tokenizer, t.max_seq_length,
                                                   t.long_examples, str(eval_file or train_file))
    if long_train or long_eval:  # they change what the arm trained on: logged with its params
        params |= {"data.train_too_long": long_train, "data.eval_too_long": long_eval}
        log.warning("%s: %d train and %d eval examples over max_seq_length %d: %s", arm,
                    long_train, long_eval, t.max_seq_length,
                    "dropped" if t.long_examples == "drop" else "truncated")
        emit("long_examples", policy=t.long_examples, train=long_train, eval=long_eval)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # a write cut short leaves nothing
    Dataset.from_list(train_enc).save_to_disk(str(tmp / "train"))
    Dataset.from_list(eval_enc).save_to_disk(str(tmp / "eval"))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return eval_rows, params
