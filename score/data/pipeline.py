"""Deterministic, resumable `grain` input pipelines over any random-access sequence of records.

    ds = make_dataset(problems, tokenize_fn=prompt_tokenize_fn(encode), batch_size=8, seed=0,
                      process_index=jax.process_index(), process_count=jax.process_count())
    it = iter(ds)
    batch = next(it)   # {"tokens_BxL": int32, "mask_BxL": int32, "index_B": int64, ...}

Order of operations, on record *indices* (so every batch can name its source records):

1. ``range(len(records))`` → ``shuffle(seed)`` (a global permutation, the same on every
   process; reseeded each epoch) → ``repeat(num_epochs)`` (None: forever);
2. shard the *global stream*: process ``p`` of ``n`` takes elements ``p, p + n, ...`` (a finite
   stream is first cut to a multiple of ``n``), so all processes take the same number of
   steps and stay in lockstep;
3. ``map``: ``tokenize_fn(records[i])`` → a dict with ``"tokens"`` (1-D ints) and anything
   else (numbers or strings), plus ``"index"`` = i;
4. ``batch`` with `pad_batch`: token ids are **left**-padded (DESIGN.md: prompts are
   left-padded) to a *bucketed* length — the smallest of ``buckets`` that fits the longest
   sequence of the batch — so a jitted consumer sees only a few shapes.

Resume: the iterator's state (``it.get_state()``, a small JSON-able dict) goes into the
orbax checkpoint. Either let orbax write it with grain's handler
(``ocp.args.Composite(data=checkpoint_save_args(it))`` / ``checkpoint_restore_args(it)``), or
save `iterator_state(it)` yourself and call `restore_iterator(it, state)` on the iterator of
a freshly built, identical pipeline. The next batch is the one the interrupted run would have
produced. `grain`, `numpy` and `orbax` are imported inside the functions.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "DEFAULT_BUCKETS",
    "bucket_length",
    "checkpoint_restore_args",
    "checkpoint_save_args",
    "iterator_state",
    "load_iterator",
    "make_dataset",
    "pad_batch",
    "prompt_tokenize_fn",
    "restore_iterator",
    "save_iterator",
]

DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def bucket_length(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The smallest bucket ``>= length``; raises ValueError if none fits."""
  for b in sorted(buckets):
    if b >= length:
      return b
  raise ValueError(
      f"sequence of {length} tokens is longer than the largest bucket {max(buckets)}; "
      "raise the buckets / max length or filter long examples"
  )


def pad_batch(
    examples: Sequence[Mapping[str, Any]],
    *,
    pad_id: int = 0,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    batch_size: int | None = None,
) -> dict[str, Any]:
  """Stacks examples into a left-padded batch.

  Args:
    examples: dicts with ``"tokens"`` (1-D ints) and other scalar fields.
    pad_id: the id written in padding positions.
    buckets: allowed padded lengths ``L`` (see `bucket_length`).
    batch_size: if given and larger than ``len(examples)`` (a final partial batch), the
      batch is filled up to ``batch_size`` rows of padding whose ``valid_B`` is 0, so shapes
      stay fixed.

  Returns:
    ``tokens_BxL`` (int32, left-padded with `pad_id`), ``mask_BxL`` (int32: 1 on real
    tokens), ``lengths_B`` (int32), ``valid_B`` (bool), and every other field ``k`` stacked
    as ``k_B`` (numpy; strings as a unicode array).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  if not examples:
    raise ValueError("pad_batch needs at least one example")
  seqs = []
  for ex in examples:
    if "tokens" not in ex:
      raise ValueError(f"tokenize_fn must return a dict with 'tokens'; got keys {sorted(ex)}")
    seqs.append(np.asarray(ex["tokens"], dtype=np.int32).reshape(-1))
  n = len(examples)
  b = max(batch_size or n, n)
  max_len = max(len(s) for s in seqs)
  length = bucket_length(max(max_len, 1), buckets)
  tokens = np.full((b, length), pad_id, dtype=np.int32)
  mask = np.zeros((b, length), dtype=np.int32)
  for row, s in enumerate(seqs):
    if len(s):
      tokens[row, length - len(s) :] = s
      mask[row, length - len(s) :] = 1
  out: dict[str, Any] = {
      "tokens_BxL": tokens,
      "mask_BxL": mask,
      "lengths_B": np.array([len(s) for s in seqs] + [0] * (b - n), dtype=np.int32),
      "valid_B": np.array([True] * n + [False] * (b - n)),
  }
  for key in examples[0]:
    if key == "tokens":
      continue
    values = [ex[key] for ex in examples]
    arr = np.asarray(values)
    if b > n:
      fill = np.zeros((b - n,) + arr.shape[1:], dtype=arr.dtype)
      arr = np.concatenate([arr, fill])
    out[f"{key}_B"] = arr
  return out


def prompt_tokenize_fn(
    encode: Callable[[str], Sequence[int]],
    prompt_fn: Callable[[Any], str] | None = None,
    *,
    max_length: int | None = None,
) -> Callable[[Any], dict[str, Any]]:
  """A `tokenize_fn` that encodes the turn-1 prompt of a `Problem`.

  Args:
    encode: text → token ids (e.g. ``lambda s: tokenizer.encode(s)``).
    prompt_fn: `Problem` → prompt text; default `score.data.prompts.first_turn_prompt`
      (plain text).
    max_length: if set, prompts longer than this keep their *last* `max_length` tokens (the
      instruction is at the start, the problem and the answer cue at the end).
  """
  if prompt_fn is None:
    from score.data import prompts  # pylint: disable=import-outside-toplevel

    prompt_fn = prompts.first_turn_prompt

  def tokenize(problem) -> dict[str, Any]:
    ids = list(encode(prompt_fn(problem)))
    if max_length is not None and len(ids) > max_length:
      ids = ids[-max_length:]
    return {"tokens": ids}

  return tokenize


def make_dataset(
    records: Sequence[Any],
    *,
    tokenize_fn: Callable[[Any], Mapping[str, Any]],
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    pad_id: int = 0,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    drop_remainder: bool = True,
):
  """Builds the pipeline described in the module docstring; returns a `grain.MapDataset`.

  Args:
    records: any random-access sequence (`Problems`, a list, a TFDS ``as_data_source``).
    tokenize_fn: record → ``{"tokens": [...], ...}``.
    batch_size: per-process batch size ``B``.
    seed: shuffle seed (the same on every process).
    shuffle: False keeps the source order (evaluation).
    num_epochs: passes over the data; None repeats forever (training).
    process_index, process_count: this process's shard (``jax.process_index()``,
      ``jax.process_count()`` in multi-host runs).
    pad_id, buckets: see `pad_batch`.
    drop_remainder: drop a final partial batch (training); with False it is padded to ``B``
      rows and marked by ``valid_B``.

  `iter(dataset)` gives a `grain.DatasetIterator` with ``get_state``/``set_state``.
  """
  import grain  # pylint: disable=import-outside-toplevel

  n = len(records)
  if n == 0:
    raise ValueError("make_dataset needs at least one record")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None or >= 1, got {num_epochs}")

  ds = grain.MapDataset.range(n)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  if process_count > 1:
    if num_epochs is not None:
      total = len(ds) // process_count * process_count
      ds = ds[:total]
    ds = ds[process_index::process_count]

  def load(i):
    i = int(i)
    ex = dict(tokenize_fn(records[i]))
    ex["index"] = i
    return ex

  ds = ds.map(load)
  batch_fn = lambda exs: pad_batch(exs, pad_id=pad_id, buckets=buckets, batch_size=batch_size)  # noqa: E731
  return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)


def iterator(dataset, *, num_threads: int = 1, prefetch: int = 8):
  """An iterator over a `grain.MapDataset` with modest threading (shared CPUs)."""
  import grain  # pylint: disable=import-outside-toplevel

  opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(dataset.to_iter_dataset(opts))


def iterator_state(it) -> dict[str, Any]:
  """The iterator's position as a JSON-able dict (a `grain.DatasetIterator`'s ``get_state``)."""
  state = it.get_state()
  if isinstance(state, bytes):  # grain.DataLoaderIterator
    return {"__grain_bytes__": state.decode("utf-8")}
  json.dumps(state)  # fail here, not at save time, if a custom iterator is not JSON-able
  return state


def restore_iterator(it, state: Mapping[str, Any]):
  """Sets `it` (from a freshly built, identical pipeline) to `state`; returns `it`."""
  state = dict(state)
  if "__grain_bytes__" in state:
    it.set_state(state["__grain_bytes__"].encode("utf-8"))
  else:
    it.set_state(state)
  return it


def checkpoint_save_args(it):
  """Orbax args saving `it` with grain's handler (per-process JSON files).

  Use inside a composite: ``manager.save(step, args=ocp.args.Composite(params=...,
  data=checkpoint_save_args(it)))``.
  """
  import grain  # pylint: disable=import-outside-toplevel

  return grain.checkpoint.CheckpointSave(it)


def checkpoint_restore_args(it):
  """Orbax args restoring into `it`: ``manager.restore(step, args=ocp.args.Composite(
  data=checkpoint_restore_args(it)))["data"]`` is `it`, moved to the saved position."""
  import grain  # pylint: disable=import-outside-toplevel

  return grain.checkpoint.CheckpointRestore(it)


def save_iterator(directory: str | os.PathLike, it, *, step: int = 0) -> None:
  """Saves `it`'s position under `directory` with an orbax `CheckpointManager` (item ``data``)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  with ocp.CheckpointManager(os.fspath(directory)) as manager:
    manager.save(step, args=ocp.args.Composite(data=checkpoint_save_args(it)))
    manager.wait_until_finished()


def load_iterator(directory: str | os.PathLike, it, *, step: int | None = None):
  """Restores `it` (a fresh iterator of the same pipeline) from `save_iterator`'s checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  with ocp.CheckpointManager(os.fspath(directory)) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {directory}")
    restored = manager.restore(step, args=ocp.args.Composite(data=checkpoint_restore_args(it)))
  return restored["data"]
