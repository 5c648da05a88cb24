"""grain pipelines: seeded shuffle, lockstep sharding, bucketed left padding, resume in a new process."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from score.data import pipeline
from score.data.records import Problem


def _records(n=37):
  # Lengths 1..n tokens so that padding and buckets are visible.
  return [Problem(id=f"r{i}", problem="x" * (i % 23 + 1), answer=str(i)) for i in range(n)]


def _tok(p):
  return {"tokens": [ord(c) for c in p.problem], "answer": p.answer}


def _indices(ds, k):
  it = iter(ds)
  return [next(it)["index_B"].tolist() for _ in range(k)]


def test_pad_batch_left_pads_to_bucket():
  exs = [{"tokens": [5, 6, 7], "id": "a"}, {"tokens": [9], "id": "b"}]
  b = pipeline.pad_batch(exs, pad_id=0, buckets=(2, 4, 8))
  np.testing.assert_array_equal(b["tokens_BxL"], [[0, 5, 6, 7], [0, 0, 0, 9]])
  np.testing.assert_array_equal(b["mask_BxL"], [[0, 1, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(b["lengths_B"], [3, 1])
  assert b["id_B"].tolist() == ["a", "b"] and b["valid_B"].tolist() == [True, True]
  filled = pipeline.pad_batch(exs, pad_id=-1, buckets=(2, 4), batch_size=3)
  assert filled["tokens_BxL"].shape == (3, 4) and filled["valid_B"].tolist() == [True, True, False]
  assert (filled["tokens_BxL"][2] == -1).all() and filled["mask_BxL"][2].sum() == 0
  with pytest.raises(ValueError, match="longer than the largest bucket 4"):
    pipeline.pad_batch([{"tokens": list(range(5))}], buckets=(2, 4))
  assert pipeline.bucket_length(17, (16, 32)) == 32 and pipeline.bucket_length(16, (32, 16)) == 16


def test_batches_have_bucketed_shapes_and_records_match_indices():
  recs = _records()
  ds = pipeline.make_dataset(recs, tokenize_fn=_tok, batch_size=4, buckets=(8, 16, 32), seed=1)
  it = iter(ds)
  for _ in range(6):
    b = next(it)
    assert b["tokens_BxL"].shape[0] == 4 and b["tokens_BxL"].shape[1] in (8, 16, 32)
    assert b["tokens_BxL"].shape[1] == pipeline.bucket_length(int(b["lengths_B"].max()), (8, 16, 32))
    for row, i in enumerate(b["index_B"]):
      want = _tok(recs[i])["tokens"]
      got = b["tokens_BxL"][row][b["mask_BxL"][row] == 1]
      assert got.tolist() == want and b["answer_B"][row] == recs[i].answer


def test_shuffle_is_seeded_and_each_epoch_is_a_permutation():
  recs = _records(12)
  a = _indices(pipeline.make_dataset(recs, tokenize_fn=_tok, batch_size=4, seed=7), 6)
  b = _indices(pipeline.make_dataset(recs, tokenize_fn=_tok, batch_size=4, seed=7), 6)
  c = _indices(pipeline.make_dataset(recs, tokenize_fn=_tok, batch_size=4, seed=8), 6)
  assert a == b and a != c
  flat = sum(a, [])
  epoch1, epoch2 = flat[:12], flat[12:]
  assert sorted(epoch1) == list(range(12)) and sorted(epoch2) == list(range(12))
  assert epoch1 != epoch2 and epoch1 != list(range(12))  # reshuffled, not in source order
  ordered = pipeline.make_dataset(recs, tokenize_fn=_tok, batch_size=5, shuffle=False, num_epochs=1,
                                  drop_remainder=False)
  batches = list(ordered)
  assert [x["index_B"][x["valid_B"]].tolist() for x in batches] == [
      list(range(5)), list(range(5, 10)), [10, 11]]


def test_process_shards_are_disjoint_and_in_lockstep():
  recs = _records(23)
  kw = dict(tokenize_fn=_tok, batch_size=2, seed=3, num_epochs=1)
  shards = [pipeline.make_dataset(recs, process_index=p, process_count=3, **kw) for p in range(3)]
  got = [[i for b in s for i in b["index_B"].tolist()] for s in shards]
  assert [len(s) for s in shards] == [3, 3, 3]  # 23 -> 21 usable -> 7 per process -> 3 batches
  assert all(len(g) == 6 for g in got)
  flat = sum(got, [])
  assert len(set(flat)) == len(flat)
  # Sharding splits the single-process stream round-robin.
  whole = [i for b in pipeline.make_dataset(recs, **{**kw, "batch_size": 1}) for i in b["index_B"].tolist()]
  for p in range(3):
    assert got[p] == whole[p:21:3][:6]
  with pytest.raises(ValueError, match="process_index"):
    pipeline.make_dataset(recs, process_index=3, process_count=3, **kw)


def test_iterator_state_round_trip_in_process():
  recs = _records()
  make = lambda: pipeline.make_dataset(recs, tokenize_fn=_tok, batch_size=3, seed=5)  # noqa: E731
  it = pipeline.iterator(make())
  for _ in range(4):
    next(it)
  state = pipeline.iterator_state(it)
  want = [next(it)["index_B"].tolist() for _ in range(2)]
  it2 = pipeline.restore_iterator(pipeline.iterator(make()), state)
  assert [next(it2)["index_B"].tolist() for _ in range(2)] == want


_RESUME = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, sys.argv[3])
    from score.data import pipeline
    from test_data_pipeline import _records, _tok
    ds = pipeline.make_dataset(_records(), tokenize_fn=_tok, batch_size=4, seed=11,
                               process_index=1, process_count=2, buckets=(8, 16, 32))
    it = pipeline.load_iterator(sys.argv[1], pipeline.iterator(ds))
    b = next(it)
    np.savez(sys.argv[2], tokens=b["tokens_BxL"], mask=b["mask_BxL"], index=b["index_B"])
    """
)


def test_resume_from_orbax_checkpoint_in_a_new_process(tmp_path):
  k = 5
  make = lambda: pipeline.make_dataset(  # noqa: E731
      _records(), tokenize_fn=_tok, batch_size=4, seed=11, process_index=1, process_count=2,
      buckets=(8, 16, 32))
  uninterrupted = iter(make())
  batches = [next(uninterrupted) for _ in range(k + 1)]

  it = pipeline.iterator(make())
  for _ in range(k):
    next(it)
  pipeline.save_iterator(tmp_path / "ckpt", it, step=k)
  assert list((tmp_path / "ckpt" / str(k)).rglob("process_0-of-1.json"))

  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
  out = tmp_path / "next.npz"
  proc = subprocess.run(
      [sys.executable, "-c", _RESUME, str(tmp_path / "ckpt"), str(out), os.path.dirname(__file__)],
      capture_output=True, text=True, env=env, timeout=120,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  got = np.load(out)
  want = batches[k]
  np.testing.assert_array_equal(got["index"], want["index_B"])
  np.testing.assert_array_equal(got["tokens"], want["tokens_BxL"])
  np.testing.assert_array_equal(got["mask"], want["mask_BxL"])
  assert not np.array_equal(got["index"], batches[k - 1]["index_B"])


def test_prompt_tokenize_fn_encodes_turn_one_prompt():
  from score.data import prompts

  p = Problem(id="a", problem="What is 1+1?", answer="2")
  fn = pipeline.prompt_tokenize_fn(lambda s: [ord(c) for c in s])
  assert fn(p)["tokens"] == [ord(c) for c in prompts.first_turn_prompt(p)]
  short = pipeline.prompt_tokenize_fn(lambda s: [ord(c) for c in s], max_length=10)
  assert short(p)["tokens"] == [ord(c) for c in prompts.first_turn_prompt(p)][-10:]
