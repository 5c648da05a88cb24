r"""A trained policy checkpoint -> a Hugging Face checkpoint (`transformers`, vLLM).

    python -m score.export --checkpoint WORKDIR/checkpoints/score/r0_stage2 --out HF_DIR
    python -m score.export --checkpoint .../r0_stage2/120 --out HF_DIR --base /ckpt/Qwen2.5-1.5B

`--checkpoint` is a phase folder of a run (`<workdir>/checkpoints/<phase>`, its latest step is
taken, or `--step`) or one step folder of it. Trainers save `state = {"params": {path: array},
"opt_state": ...}` with orbax, params flat and keyed by the `jax.tree_util.keystr` paths of
the NNX model state (`score.trainers.common.Policy`); only `params` is read.

The model's layout comes from, in order:
1. `--base`: the Hugging Face directory the run started from;
2. the run's `config.json` (found above the checkpoint): `model.model_dir` when set, else a
   fresh tiny model as `score.trainers.common.build_model(config.model, vocab_size)` built it,
   with the vocabulary size read from the checkpoint.

A LoRA run's checkpoint holds its adapters only (`score.models.lora`); the export rebuilds the
frozen base as the trainer did (the Hugging Face checkpoint above, else the run's SFT warm-up
phase `checkpoints/warmup`, else the fresh model of the run's seed), merges the adapters into
it for `config.json` + `model.safetensors`, and, when the run started from a Hugging Face
checkpoint, also writes `OUT/adapter/` in the `peft` library's format (`adapter_config.json`
naming that checkpoint, `adapter_model.safetensors`). A Self-Rewarding iteration's adapters
apply to the model the previous iteration ended with: pass its export, `--base
WORKDIR/models/M<t>`.

The tokenizer comes from `--tokenizer`, else from the base / `model_dir` checkpoint, else, for
the embedded synthetic tasks, a character-level `PreTrainedTokenizerFast` with the task's
vocabulary (same ids as `score.data.synthetic.CharTokenizer`; BOS `^`, EOS `.`, pad `_`).
The output holds `config.json`, `model.safetensors` (sharded above 5 GiB), the tokenizer
files and `score_export.json` (where the weights came from: checkpoint, step, commit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class ExportError(ValueError):
  """A checkpoint that cannot be exported (what was found, what was expected)."""


# ---------------------------------------------------------------------------------------------
# Finding the checkpoint and its run


def _is_step_dir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "state"))


def _steps(phase_dir: str) -> list[int]:
  if not os.path.isdir(phase_dir):
    return []
  return sorted(int(d) for d in os.listdir(phase_dir)
                if d.isdigit() and _is_step_dir(os.path.join(phase_dir, d)))


def list_phases(workdir: str) -> list[str]:
  """Phase folders under `<workdir>/checkpoints` that hold at least one step."""
  root = os.path.join(workdir, "checkpoints")
  out = []
  for dirpath, dirnames, _ in os.walk(root):
    if _steps(dirpath):
      out.append(os.path.relpath(dirpath, root))
      dirnames[:] = []
  return sorted(out)


def resolve_checkpoint(path: str, step: int | None = None) -> tuple[str, int]:
  """`(step_dir, step)` of a phase folder (latest step, or `step`) or of a step folder."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.isdir(path):
    raise ExportError(f"checkpoint {path!r} is not a directory")
  if _is_step_dir(path):
    name = os.path.basename(path)
    if step is not None and name != str(step):
      raise ExportError(f"{path!r} is the checkpoint of step {name}, but --step={step} was given")
    return path, int(name) if name.isdigit() else -1
  steps = _steps(path)
  if steps:
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise ExportError(f"no step {step} in {path!r}; saved steps: {steps}")
    return os.path.join(path, str(step)), step
  if os.path.isdir(os.path.join(path, "checkpoints")):
    phases = list_phases(path)
    raise ExportError(
        f"{path!r} is a workdir; pass one of its phases as --checkpoint: "
        + (", ".join(os.path.join(path, "checkpoints", p) for p in phases) or "(none saved)"))
  raise ExportError(
      f"{path!r} is neither a phase folder (numbered step folders) nor a step folder "
      "(with a `state` item) of an orbax checkpoint")


def find_workdir(step_dir: str) -> str | None:
  """The run's workdir above `<workdir>/checkpoints/<phase>/<step>`, if it has config.json."""
  d = os.path.abspath(step_dir)
  while True:
    parent = os.path.dirname(d)
    if parent == d:
      return None
    if os.path.basename(d) == "checkpoints" and os.path.exists(
        os.path.join(parent, "config.json")):
      return parent
    d = parent


# ---------------------------------------------------------------------------------------------
# Reading the params


def checkpoint_params_metadata(step_dir: str) -> dict[str, Any]:
  """`{key: (shape, dtype)}` of the saved `params` (no array is read)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state_dir = os.path.join(step_dir, "state")
  meta = ocp.StandardCheckpointer().metadata(state_dir)
  tree = getattr(meta, "item_metadata", meta)
  if "params" not in tree:
    raise ExportError(f"the state saved in {state_dir!r} has no 'params' item; "
                      f"it has {sorted(tree.keys())}")
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in tree["params"].items()}


def load_params(step_dir: str, keys_shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Reads only `params` of a trainer's checkpoint (the optimizer state stays on disk).

  `keys_shapes` is the model's `{key: shape}`; a missing, extra or mis-shaped key raises
  `ExportError` naming it (the checkpoint and the model layout do not match). Params saved
  per layer (before the decoder blocks were stacked) are stacked.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from score.utils import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  saved = checkpoint_params_metadata(step_dir)
  abstract = {"params": {k: jax.ShapeDtypeStruct(saved[k][0], saved[k][1]) for k in saved}}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  restored = ocp.PyTreeCheckpointer().restore(
      os.path.join(step_dir, "state"),
      args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args,
                                  partial_restore=True))
  params = ckpt_lib.stack_per_layer(
      {k: np.asarray(v) for k, v in restored["params"].items()}, keys_shapes)
  missing = sorted(set(keys_shapes) - set(params))
  extra = sorted(set(params) - set(keys_shapes))
  if missing or extra:
    raise ExportError(
        f"the checkpoint's params do not match the model layout: {len(missing)} missing "
        f"(e.g. {missing[:3]}), {len(extra)} unexpected (e.g. {extra[:3]}). Is --base (or the "
        "run's config) the model this run trained?")
  bad = [(k, params[k].shape, tuple(s)) for k, s in keys_shapes.items()
         if params[k].shape != tuple(s)]
  if bad:
    k, got, want = bad[0]
    raise ExportError(f"param {k} has shape {got} in the checkpoint, the model expects {want} "
                      f"({len(bad)} mismatched). Is --base the model this run trained?")
  return params


# ---------------------------------------------------------------------------------------------
# The model layout and the tokenizer


def _has_tokenizer(path: str | None) -> bool:
  return bool(path) and any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def _synthetic_task(run_config: dict):
  task = dict(run_config.get("task") or {})
  name = task.pop("name", None)
  if not name or name in ("math", "code"):
    return None
  from score.data import synthetic  # pylint: disable=g-import-not-at-top
  try:
    return synthetic.make_task(name, **task)
  except (KeyError, TypeError, ValueError) as e:
    log.warning("could not rebuild the synthetic task %r of the run: %s", name, e)
    return None


def char_tokenizer(tokenizer):
  """A `transformers.PreTrainedTokenizerFast` with the ids of a `synthetic.CharTokenizer`.

  One token per character (`WordLevel` over a split into single characters), decoded by
  joining; BOS, EOS and pad are the synthetic task's `^`, `.` and `_`.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from score.data import synthetic  # pylint: disable=g-import-not-at-top
  vocab = {c: i for i, c in enumerate(tokenizer.chars)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=synthetic.PAD))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split(
      tokenizers.Regex("."), behavior="isolated")
  tok.decoder = tokenizers.decoders.Fuse()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=synthetic.BOS, eos_token=synthetic.EOS,
      pad_token=synthetic.PAD, clean_up_tokenization_spaces=False)


def model_config(*, base: str | None, run_config: dict | None,
                 saved: dict[str, tuple]) -> tuple[Any, str | None, Any]:
  """`(ModelConfig, tokenizer_dir, synthetic_task)` of the checkpoint's model.

  `saved` is `checkpoint_params_metadata(...)` (the vocabulary size of a fresh model is read
  from the embedding's shape).
  """
  from score.models import ModelConfig  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  model_cfg = dict((run_config or {}).get("model") or {})
  source = base or model_cfg.get("model_dir") or None
  if source:
    if not os.path.isdir(source):
      raise ExportError(f"model directory {source!r} does not exist; pass the Hugging Face "
                        "directory the run started from as --base")
    return hf.load_config(source), source, None
  if run_config is None:
    raise ExportError(
        "cannot tell the model's layout: no --base given and no config.json of the run found "
        "above the checkpoint (expected <workdir>/checkpoints/<phase>/<step>)")
  task = _synthetic_task(run_config)
  embed = [shape for key, (shape, _) in saved.items() if re.match(r"^\['embed'\]", key)]
  if len(embed) == 1:
    vocab_size = int(embed[0][0])
  elif task is not None or model_cfg.get("vocab_size"):  # e.g. a LoRA run's adapters only
    vocab_size = task.tokenizer.vocab_size if task is not None else int(model_cfg["vocab_size"])
  else:
    raise ExportError("no ['embed'] parameter in the checkpoint to read the vocabulary size from")
  # As `score.trainers.common.build_model` builds a fresh model.
  config = ModelConfig.from_section(model_cfg, vocab_size)
  if task is not None:
    t = task.tokenizer
    if t.vocab_size != vocab_size:
      raise ExportError(f"the run's task has {t.vocab_size} tokens, the checkpoint's embedding "
                        f"{vocab_size}")
    config = config.replace(bos_token_id=t.bos_id, eos_token_ids=(t.eos_id,),
                            pad_token_id=t.pad_id)
  return config, None, task


# ---------------------------------------------------------------------------------------------
# Export


def _lora_base(config, base_dtype, source_dir, workdir, run_config, shapes):
  """`(frozen base params (float32 values of `base_dtype` weights), where they came from)` of a
  LoRA run, as its trainer built them: the full-weight SFT warm-up that made a synthetic
  task's base (`checkpoints/warmup`), else the Hugging Face checkpoint it started from, else
  the fresh model of the run's seed."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from score.models import Transformer, lora  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  from score.trainers import common  # pylint: disable=g-import-not-at-top
  plain = config.replace(lora_rank=0, param_dtype=base_dtype)
  warmup = os.path.join(workdir or "", "checkpoints", "warmup")
  warmup_dir = resolve_checkpoint(warmup)[0] if workdir and _steps(warmup) else None
  if warmup_dir and not lora.has_adapters(checkpoint_params_metadata(warmup_dir)):
    params, source = load_params(warmup_dir, shapes), warmup_dir
  elif source_dir:
    _, params = common.Policy.split(hf.from_pretrained(source_dir, param_dtype=base_dtype))
    source = os.path.abspath(source_dir)
  else:
    seed = int(run_config.get("seed", 0))
    _, params = common.Policy.split(Transformer(plain, rngs=nnx.Rngs(seed)))
    source = f"a fresh model of seed {seed}"
  return {k: jnp.asarray(v, base_dtype).astype(jnp.float32) for k, v in params.items()}, source


def export(checkpoint: str, out: str, *, tokenizer: str | None = None, base: str | None = None,
           step: int | None = None, dtype: str = "float32") -> dict:
  """Writes the policy of `checkpoint` as a Hugging Face checkpoint to `out`.

  Args:
    checkpoint: a phase folder (latest step, or `step`) or a step folder of a run.
    out: the output directory (created; its old *.safetensors are replaced).
    tokenizer: a directory with tokenizer files (default: see the module docstring).
    base: the Hugging Face directory the run started from (default: the run's config).
    step: which step of a phase folder.
    dtype: "float32" or "bfloat16" for the stored weights.

  Returns:
    What `score_export.json` records: source checkpoint, step, workdir, commit, tokenizer.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from score.models import Transformer, lora  # pylint: disable=g-import-not-at-top
  from score.models import config as model_config_lib  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  from score.trainers import common  # pylint: disable=g-import-not-at-top

  step_dir, step = resolve_checkpoint(checkpoint, step)
  workdir = find_workdir(step_dir)
  run_config = run_info = None
  if workdir is not None:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      run_config = json.load(f)
    info_path = os.path.join(workdir, "run_info.json")
    if os.path.exists(info_path):
      with open(info_path, encoding="utf-8") as f:
        run_info = json.load(f)
  saved = checkpoint_params_metadata(step_dir)
  config, source_dir, task = model_config(base=base, run_config=run_config, saved=saved)
  adapters = any(lora.is_adapter(k) for k in saved)
  if adapters:  # the run's LoRA settings; the base merged in float32
    if run_config is None:
      raise ExportError("the checkpoint holds LoRA adapters only: export it with the run's "
                        "config.json (model.lora) above it, <workdir>/checkpoints/<phase>")
    base_dtype = model_config_lib.compute_dtype(run_config["model"].get("base_dtype",
                                                                        "float32"))
    config = config.replace(**model_config_lib.lora_fields(run_config["model"].get("lora")),
                            param_dtype=jnp.float32)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  policy, template = common.Policy.split(abstract)
  shapes = {k: tuple(v.shape) for k, v in template.items()}
  if adapters:
    params = load_params(step_dir, {k: v for k, v in shapes.items() if lora.is_adapter(k)})
    base_params, base_source = _lora_base(config, base_dtype, source_dir, workdir, run_config,
                                          {k: v for k, v in shapes.items()
                                           if not lora.is_adapter(k)})
    params.update(base_params)
  else:
    params = load_params(step_dir, shapes)
  model = policy.model({k: jnp.asarray(v, dtype=template[k].dtype) for k, v in params.items()})

  tok, tok_source = None, None
  if tokenizer:
    tok, tok_source = hf.load_tokenizer(tokenizer), os.path.abspath(tokenizer)
  elif _has_tokenizer(source_dir):
    tok, tok_source = hf.load_tokenizer(source_dir), os.path.abspath(source_dir)
  elif task is not None:
    tok, tok_source = char_tokenizer(task.tokenizer), "synthetic character vocabulary"
  else:
    log.warning("no tokenizer found (pass --tokenizer DIR); writing the weights only")
  hf.save_pretrained(model, out, tokenizer=tok, dtype=dtype)  # adapters merged
  adapter_dir = None
  if adapters and source_dir and base_source == os.path.abspath(source_dir):
    # Adapters over a Hugging Face checkpoint: PEFT loads them onto it.
    adapter_dir = os.path.join(out, "adapter")
    hf.save_peft_adapter(model, adapter_dir,
                         base_model_name_or_path=os.path.abspath(source_dir))
  record = {
      "checkpoint": step_dir, "step": step, "workdir": workdir,
      "commit": (run_info or {}).get("commit"), "base": os.path.abspath(base) if base else None,
      "model_dir": source_dir, "tokenizer": tok_source, "dtype": dtype,
      "model_type": config.model_type, "num_params": int(sum(v.size for v in params.values())),
  }
  if adapters:
    record["lora"] = {"rank": config.lora_rank, "alpha": config.lora_alpha,
                      "targets": list(config.lora_targets), "base": base_source,
                      "peft_adapter": adapter_dir}
  with open(os.path.join(out, "score_export.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  return record


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m score.export",
      description="Export a trained policy checkpoint as a Hugging Face checkpoint.")
  parser.add_argument("--checkpoint", required=True,
                      help="<workdir>/checkpoints/<phase> (latest step) or a step folder in it")
  parser.add_argument("--out", required=True, help="output Hugging Face directory")
  parser.add_argument("--tokenizer", default=None, help="directory with tokenizer files")
  parser.add_argument("--base", default=None,
                      help="the Hugging Face checkpoint the run started from")
  parser.add_argument("--step", type=int, default=None, help="step of a phase folder")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args(argv)
  try:
    record = export(args.checkpoint, args.out, tokenizer=args.tokenizer, base=args.base,
                    step=args.step, dtype=args.dtype)
  except ExportError as e:
    print(f"score.export: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out} from {record['checkpoint']} (step {record['step']}, "
        f"{record['num_params']:,} params, tokenizer: {record['tokenizer'] or 'none'})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
