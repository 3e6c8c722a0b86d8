"""
``SFNetCheckpointer``: detectron2's ``DetectionCheckpointer`` made safe for long jobs on shared
clusters.

* **Atomic writes.** A checkpoint is written to a temporary file in the same folder, flushed to
  disk and renamed over its final name; ``last_checkpoint`` is updated the same way and only after
  the checkpoint is complete. A job killed at any moment leaves either the old or the new file,
  never a truncated one, and ``last_checkpoint`` never names a broken file. Files get the
  permissions ``torch.save`` to a path would give them (0o666 minus the umask), so that
  teammates who may read the output folder may read its checkpoints.
* **Clear resumption errors.** ``resume_or_load(..., resume=True)`` with a ``last_checkpoint``
  that is empty or names a file that does not exist raises :class:`LastCheckpointError` naming
  it, listing the checkpoints that do exist (newest first) and saying how to resume from one.
* **Safe reads.** Files are read with ``torch.load(..., weights_only=True)`` (no code runs while
  unpickling); detectron2/Caffe2 ``.pkl`` files go through an unpickler that only builds numpy
  arrays and plain containers. A file that cannot be read is named in the error with what to do.
* **No silent partial loads.** fvcore only *logs* keys that do not match, so a checkpoint of
  another architecture would leave a mostly random model training quietly. Here every mismatch is
  listed and loading stops, except

  - weights of whole top-level modules the file does not contain at all (an ImageNet backbone
    file leaves the head to its random init; logged), and
  - class-specific weights (the last classifier layers, ``CLASS_SPECIFIC_PATTERNS``) whose shape
    differs because the class set differs (fine-tuning on another dataset): re-initialised with
    an explicit warning.
"""
import logging
import os
import pickle
import re
import secrets
import shlex
from typing import Any, Dict, Iterable, List, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["SFNetCheckpointer", "CheckpointMismatchError", "CheckpointReadError",
           "MissingWeightsError",
           "LastCheckpointError",
           "atomic_write_bytes", "load_model_weights", "RANDOM_WEIGHTS"]

# MODEL.WEIGHTS value that asks for a randomly initialised model on purpose (e.g. to benchmark
# an untrained model); an empty MODEL.WEIGHTS is an error wherever the result depends on weights.
RANDOM_WEIGHTS = "random"

logger = logging.getLogger(__name__)

# Parameters whose shape depends on the number of classes. A shape mismatch there is the normal
# consequence of fine-tuning on another dataset, not of loading the wrong architecture.
CLASS_SPECIFIC_PATTERNS = (
    r"(^|\.)predictor\.",           # SFNet / FCN classifiers
    r"(^|\.)dsn_heads\.\d+\.2\.",   # the 1x1 classifier of each deep-supervision head
    r"(^|\.)fc_cls\.",              # K-Net classification heads
    r"(^|\.)stuff_kernels?\b",      # K-Net: one kernel per stuff class
    r"(^|\.)conv_seg\.",            # K-Net semantic kernel conv
)


class CheckpointMismatchError(RuntimeError):
    """The file does not fit the model: it lists every mismatch."""


class MissingWeightsError(ValueError):
    """MODEL.WEIGHTS is empty where the result depends on trained weights."""


class CheckpointReadError(RuntimeError):
    """The file cannot be read safely: damaged, truncated, or it needs code to unpickle."""


def load_model_weights(model, weights: str, *, purpose: str, required: bool = True) -> None:
    """
    The one way every command (evaluation, predictor, demo, export, benchmark, flow pictures,
    the panoptic pipeline) loads ``MODEL.WEIGHTS`` into ``model``: ``SFNetCheckpointer``'s safe
    reader (no code runs from the file) and strict matching (another architecture's file raises
    ``CheckpointMismatchError``; class-count and backbone-only differences are logged).

    Args:
        weights: a path, "" or ``RANDOM_WEIGHTS`` ("random": keep the random initialisation, on
            purpose; logged).
        purpose: what the weights are for, in the messages ("evaluation", "the demo", ...).
        required: an empty ``weights`` raises ``MissingWeightsError``; False only logs it
            (commands whose figures do not depend on the weights, e.g. FLOP counts).
    """
    if weights == RANDOM_WEIGHTS:
        logger.warning(f"MODEL.WEIGHTS {RANDOM_WEIGHTS}: {purpose} uses a randomly initialised "
                       "model, as asked")
        return
    if not weights:
        if required:
            raise MissingWeightsError(
                f"MODEL.WEIGHTS is empty: {purpose} needs trained weights. Pass MODEL.WEIGHTS "
                f"path/to/model_final.pth, or MODEL.WEIGHTS {RANDOM_WEIGHTS} to use a randomly "
                "initialised model on purpose")
        logger.info(f"MODEL.WEIGHTS is empty: {purpose} uses a randomly initialised model")
        return
    SFNetCheckpointer(model).load(weights)


class LastCheckpointError(FileNotFoundError):
    """``--resume`` cannot use ``OUTPUT_DIR/last_checkpoint`` (empty, unreadable, or naming a
    file that does not exist). The message names the file and its content, lists the checkpoint
    files that exist (newest first) and says how to resume from one of them.

    A subclass of FileNotFoundError, so that callers may catch either."""


def _create_new(folder: str, prefix: str):
    """Create and open a new, uniquely named file in ``folder``; (fd, path).

    Not ``tempfile.mkstemp``: it creates files with mode 0o600 whatever the umask, the rename
    keeps that mode, and teammates on a shared cluster could not read the checkpoints. ``os.open``
    with mode 0o666 lets the kernel apply the umask (and a folder's default ACL), as
    ``open(path, "wb")`` and ``torch.save(obj, path)`` do."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}.tmp")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a temporary file {prefix}*.tmp in {folder}")


def atomic_write_bytes(path: str, write_fn) -> None:
    """Call ``write_fn(fileobj)`` on a temporary file next to ``path``, then rename it over
    ``path``. The rename is atomic on POSIX file systems, so readers see the old or new file.
    The file gets the mode a plain ``open(path, "wb")`` would create it with (0o666 & ~umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _create_new(folder, f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Also on KeyboardInterrupt/SystemExit: never leave the half-written temporary behind.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _checkpoint_order(name: str):
    """Sort key, newest first: model_final, then by the iteration in the name, then the rest."""
    if os.path.splitext(name)[0] == "model_final":
        return (0, 0, name)
    numbers = re.findall(r"\d+", name)
    if numbers:
        return (1, -int(numbers[-1]), name)
    return (2, 0, name)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles detectron2/Caffe2 weight files (dicts of numpy arrays) and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain weight array")


def _matches_any(key: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, key) for p in patterns)


class SFNetCheckpointer(DetectionCheckpointer):
    """See the module docstring. A drop-in replacement for ``DetectionCheckpointer``."""

    def __init__(self, model, save_dir="", *, strict: bool = True,
                 class_specific_patterns: Sequence[str] = CLASS_SPECIFIC_PATTERNS, **kwargs):
        """
        Args:
            strict: stop on mismatches (see module docstring); False restores fvcore's behaviour
                of logging them and loading what fits.
            class_specific_patterns: regexes of parameter names allowed to differ in shape
                (re-initialised with a warning).
        """
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self.class_specific_patterns = tuple(class_specific_patterns)

    # ---------------------------------------------------------------- writing
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write_bytes(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_bytes(path, lambda f: f.write(last_filename_basename.encode()))

    # ---------------------------------------------------------------- resuming
    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """fvcore's ``resume_or_load``, except that a ``last_checkpoint`` that cannot be used is
        an error saying how to recover (:class:`LastCheckpointError`) instead of fvcore's
        ``Checkpoint <dir>/<name> not found!`` assertion."""
        if resume and self.has_checkpoint():
            return self.load(self._resume_file())
        return self.load(path, checkpointables=[])

    def _resume_file(self) -> str:
        tag = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with open(tag) as f:
                name = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise LastCheckpointError(self._resume_advice(
                f"--resume: cannot read {tag} ({type(e).__name__}: {e}).")) from e
        if not name:
            raise LastCheckpointError(self._resume_advice(
                f"--resume: {tag} is empty; it should hold the file name of the checkpoint to "
                "resume from."))
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise LastCheckpointError(self._resume_advice(
                f"--resume: {tag} names {name!r}, but {path} does not exist (deleted or moved?)."))
        return path

    def _existing_checkpoints(self) -> List[str]:
        try:
            names = [n for n in os.listdir(self.save_dir) if n.endswith(".pth")
                     and os.path.isfile(os.path.join(self.save_dir, n))]
        except OSError:
            return []
        return sorted(names, key=_checkpoint_order)

    def _resume_advice(self, problem: str) -> str:
        tag = os.path.join(self.save_dir, "last_checkpoint")
        found = self._existing_checkpoints()
        if not found:
            return (
                f"{problem}\nThere is no checkpoint file (*.pth) in {self.save_dir}. Run without "
                "--resume to start from MODEL.WEIGHTS, or point OUTPUT_DIR at the folder that "
                "holds the checkpoints."
            )
        shown = ", ".join(found[:10]) + (f", ... ({len(found)} files)" if len(found) > 10 else "")
        return (
            f"{problem}\nCheckpoints in {self.save_dir} (newest first): {shown}.\n"
            "To resume from one of them, write its name into last_checkpoint, e.g.\n"
            f"  echo {shlex.quote(found[0])} > {shlex.quote(tag)}\n"
            "then run again with --resume. Or start a new schedule from its weights: run without "
            f"--resume with MODEL.WEIGHTS {shlex.quote(os.path.join(self.save_dir, found[0]))}."
        )

    # ---------------------------------------------------------------- reading
    def load(self, path: str, checkpointables=None):
        if path == RANDOM_WEIGHTS:  # training from scratch, said explicitly
            self.logger.info(f"MODEL.WEIGHTS {RANDOM_WEIGHTS}: the model keeps its random "
                             "initialisation")
            return {}
        return super().load(path, checkpointables)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if not os.path.isfile(filename):
            raise FileNotFoundError(
                f"Checkpoint {filename} does not exist (MODEL.WEIGHTS or OUTPUT_DIR/last_checkpoint)"
            )
        if filename.endswith(".pkl"):
            try:
                with open(filename, "rb") as f:
                    data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            except Exception as e:
                raise CheckpointReadError(
                    f"Cannot read {filename} as a detectron2/Caffe2 .pkl weight file: {e}. Only "
                    "dicts of numpy arrays are accepted; convert other files to a state_dict .pth"
                ) from e
            if "model" in data and "__author__" in data:
                return {"model": data["model"], "__author__": data["__author__"],
                        "matching_heuristics": True}
            return {"model": data.get("blobs", data), "__author__": "Caffe2",
                    "matching_heuristics": True}
        try:
            data = torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointReadError(
                f"Refusing to load {filename}: it needs arbitrary code to unpickle "
                f"(torch.load weights_only=True failed: {str(e).splitlines()[0]}). Re-save only its "
                "state_dict with torch.save(model.state_dict(), path) from a trusted session"
            ) from e
        except (RuntimeError, EOFError, OSError) as e:
            raise CheckpointReadError(
                f"Checkpoint {filename} is damaged or truncated ({type(e).__name__}: {e}); "
                "delete it and resume from an earlier checkpoint, or point MODEL.WEIGHTS at a "
                "good file"
            ) from e
        if not isinstance(data, dict):
            raise CheckpointReadError(
                f"Checkpoint {filename} holds a {type(data).__name__}, not a dict")
        if "model" not in data:
            data = {"model": data}
        return data

    def _load_model(self, checkpoint: Any):
        model_state = self.model.state_dict()
        ckpt_state = checkpoint["model"]
        reinit = self._drop_class_specific_mismatches(model_state, ckpt_state)
        incompatible = super()._load_model(checkpoint)
        if not self.strict:
            return incompatible
        unexpected = list(incompatible.unexpected_keys)
        shapes = [s for s in incompatible.incorrect_shapes if s[0] not in reinit]
        missing = self._missing_in_partly_covered_modules(
            [k for k in incompatible.missing_keys if k not in reinit], ckpt_state.keys()
        )
        if unexpected or shapes or missing:
            raise CheckpointMismatchError(self._describe(missing, unexpected, shapes))
        return incompatible

    # ---------------------------------------------------------------- helpers
    def _drop_class_specific_mismatches(self, model_state, ckpt_state) -> List[str]:
        reinit = []
        for key in list(ckpt_state):
            if key not in model_state or not _matches_any(key, self.class_specific_patterns):
                continue
            if tuple(ckpt_state[key].shape) != tuple(model_state[key].shape):
                logger.warning(
                    f"Class-specific weight {key}: checkpoint shape {tuple(ckpt_state[key].shape)} "
                    f"!= model shape {tuple(model_state[key].shape)} (another class set); it keeps "
                    "its random initialisation"
                )
                del ckpt_state[key]
                reinit.append(key)
        return reinit

    @staticmethod
    def _missing_in_partly_covered_modules(missing: Iterable[str], ckpt_keys: Iterable[str]):
        """Missing keys are fine for a top-level module the file has nothing of (e.g. the head,
        when starting from ImageNet backbone weights); inside a module the file does cover they
        mean the file is another architecture."""
        covered = {k.split(".", 1)[0] for k in ckpt_keys}
        bad, absent = [], set()
        for key in missing:
            top = key.split(".", 1)[0]
            (bad.append(key) if top in covered else absent.add(top))
        for top in sorted(absent):
            logger.info(f"The checkpoint has no weights for '{top}': it keeps its initialisation")
        return bad

    @staticmethod
    def _describe(missing, unexpected, shapes) -> str:
        def block(title, items):
            if not items:
                return ""
            shown = "\n".join(f"    {x}" for x in items[:30])
            more = f"\n    ... and {len(items) - 30} more" if len(items) > 30 else ""
            return f"\n  {title} ({len(items)}):\n{shown}{more}"

        shape_lines = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in shapes]
        return (
            "The checkpoint does not match the model (is it for another architecture or config?)"
            + block("missing in the checkpoint", list(missing))
            + block("unexpected in the checkpoint", list(unexpected))
            + block("shape mismatches", shape_lines)
            + "\n  Use the config the checkpoint was trained with; for official SFSegNets files run "
            "projects/SFNet/convert_official.py first."
        )

