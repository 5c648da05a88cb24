"""Bradley–Terry reward-model trainer (score.trainers.reward_model)."""

import itertools
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import reward_model_synthetic
from score.data import synthetic
from score.models import ModelConfig, Transformer
from score.trainers import common
from score.trainers import reward_model as rm_lib


def test_synthetic_preferences_rank_the_right_sum_first():
  task = synthetic.AdditionTask(num_digits=3)
  problems = task.problems(20, seed=0)
  tokens, mask, ranks = rm_lib.synthetic_preferences(task, problems, 4, seed=1)
  assert tokens.shape[:2] == (20, 4) and mask.shape == tokens.shape and ranks.shape == (20, 4)
  tok = task.tokenizer
  for i, p in enumerate(problems):
    assert (ranks[i] == 0).sum() == 1
    for k in range(4):
      ids = tokens[i, k][mask[i, k] > 0].tolist()
      assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id  # left-padded, ends with EOS
      text = tok.decode(ids)
      assert text.startswith(p.question)
      answer = text[len(p.question):]
      assert (answer == p.answer) == (ranks[i, k] == 0), (text, ranks[i, k])
  # The right answer is not always in the same slot.
  assert len(set(np.argmin(ranks, axis=1).tolist())) > 1


def test_pair_accuracy_and_loss_against_numpy():
  rewards = np.array([[2.0, 1.0, 3.0, 0.5], [0.0, 0.0, 1.0, -1.0]], np.float32)
  ranks = np.array([[0, 1, 1, 2], [1, 0, 1, 1]])
  right = pairs = 0
  losses = []
  for b in range(2):
    per = []
    for i, j in itertools.combinations(range(4), 2):
      if ranks[b, i] == ranks[b, j]:
        continue
      w, l = (i, j) if ranks[b, i] < ranks[b, j] else (j, i)
      pairs += 1
      right += rewards[b, w] > rewards[b, l]
      per.append(np.log1p(np.exp(-(rewards[b, w] - rewards[b, l]))))
    losses.append(np.mean(per))
  acc = rm_lib.pair_accuracy(jnp.asarray(rewards), jnp.asarray(ranks))
  assert float(acc) == pytest.approx(right / pairs)
  from score.losses import preference
  loss = preference.bradley_terry_k_choose_2(jnp.asarray(rewards), jnp.asarray(ranks))
  np.testing.assert_allclose(np.asarray(loss), losses, rtol=1e-5)


def test_last_token_scores_left_and_right_padding():
  scores = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
  mask = jnp.asarray([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(rm_lib.last_token_scores(scores, mask)), [3, 6, 8])


def test_scalar_model_drops_unembedding_and_starts_at_zero():
  config = ModelConfig.tiny(vocab_size=8, hidden_size=16, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=8, intermediate_size=32)
  model = rm_lib.ScalarModel(Transformer(config, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  _, params = common.Policy.split(model)
  assert not any("lm_head" in k for k in params)
  tokens = jnp.asarray([[1, 3, 4, 2]])
  np.testing.assert_array_equal(np.asarray(model(tokens)), np.zeros((1, 4)))


def test_reward_model_runlocal_end_to_end(tmp_path):
  config = reward_model_synthetic.get_config("runlocal")
  results = rm_lib.train(config, str(tmp_path))
  assert set(results) == {"init", "trained"}
  assert results["init"]["accuracy"] == 0.0  # zero head: every pair tied, none ordered
  assert results["trained"]["pairs"] == 16 * 3  # 1 right vs 3 wrong per prompt
  assert os.path.isdir(tmp_path / rm_lib.EXPORT_DIR)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows if "rm/loss" in r] == [1, 2, 3, 4]
  # The export loads back into the same tree.
  task = synthetic.make_task(config.task.name, **{k: v for k, v in config.task.items()
                                                   if k != "name"})
  model = rm_lib.build_scalar_model(config.model, task.tokenizer.vocab_size, seed=0)
  _, template = common.Policy.split(model)
  loaded = rm_lib.load_params(str(tmp_path), template)
  assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in template.items()}


class _CharCodec:
  """One id per character (1 + ord % 50), EOS 99, pad 0; prompts rendered as "Q" + text."""
  eos_ids, pad_id = (99,), 0

  def user_prompt(self, text):
    return "Q" + text

  def encode(self, text):
    return [1 + ord(ch) % 50 for ch in text]


def test_ranked_arrays_pad_slots_truncate_from_the_left_and_end_in_eos():
  from score.data import self_rewarding as sr  # pylint: disable=g-import-not-at-top
  ranked = [sr.RankedPrompt("b", ("cd", "e", "f"), (0, 1, 1)),
            sr.RankedPrompt("bcdefgh", ("ij",), (0,))]
  codec = _CharCodec()
  (tokens, mask, ranks), cut = rm_lib.ranked_arrays(codec, ranked, max_len=6)
  assert tokens.shape == (2, 3, 6) and cut == 1
  np.testing.assert_array_equal(tokens[0, 0], [0] + codec.encode("Qbcd") + [99])
  np.testing.assert_array_equal(mask[0, 1], [0, 0, 1, 1, 1, 1])  # "Qbe" + EOS, left-padded
  np.testing.assert_array_equal(tokens[1, 0], codec.encode("fghij") + [99])  # kept the end
  assert not mask[1, 1:].any()  # the second prompt's empty slots
  np.testing.assert_array_equal(ranks[0], [0, 1, 1])
  with pytest.raises(ValueError, match="more than num_responses=2"):
    rm_lib.ranked_arrays(codec, ranked, max_len=6, num_responses=2)


def test_padding_slots_take_part_in_no_pair():
  """A prompt padded from 2 to 3 responses scores like the unpadded prompt."""
  rewards = jnp.asarray([[1.0, -0.5, 7.0]])
  ranks = jnp.asarray([[1, 0, 0]])
  valid = jnp.asarray([[True, True, False]])
  assert float(rm_lib.pair_accuracy(rewards, ranks, valid)) == 0.0  # 1 pair, misordered
  assert float(rm_lib.pair_accuracy(rewards, ranks)) == 0.5  # the padding would count


def test_reward_model_on_jsonl_runlocal(tmp_path):
  """configs/reward_model.py:runlocal — ranked JSONL written to the workdir (every third
  prompt with 3 of 4 responses), a tiny checkpoint + BPE tokenizer, held-out split by
  prompt; the trained head orders held-out pairs better than the zero head."""
  from configs import reward_model  # pylint: disable=g-import-not-at-top
  results = rm_lib.train(reward_model.get_config("runlocal"), str(tmp_path))
  # 24 held-out prompts: 16 with 4 responses (6 pairs), 8 with 3 (3 pairs); no ties.
  assert results["init"]["pairs"] == results["trained"]["pairs"] == 16 * 6 + 8 * 3
  assert results["init"]["accuracy"] == 0.0 and results["trained"]["accuracy"] > 55.0
  assert os.path.isdir(tmp_path / rm_lib.EXPORT_DIR)
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["data"]["train_prompts"] == 72 and saved["data"]["heldout_prompts"] == 24


def test_jsonl_reward_model_needs_a_checkpoint(tmp_path):
  from configs import reward_model  # pylint: disable=g-import-not-at-top
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  config = reward_model.get_config(f"train_path={tmp_path / 'p.jsonl'}")
  with pytest.raises(config_lib.ConfigError, match="model.model_dir"):
    rm_lib.train(config, str(tmp_path))


def test_reward_model_learns_a_visible_preference(tmp_path):
  """Preferred responses end in an even digit: a fact the head can read off the last token."""
  config = ModelConfig.tiny(vocab_size=16, hidden_size=16, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=8, intermediate_size=32)
  model_def, params = common.Policy.split(
      rm_lib.ScalarModel(Transformer(config, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1)))

  def batches(step):
    rng = np.random.default_rng(step)
    b, k, length = 16, 3, 5
    tokens = rng.integers(3, 13, size=(b, k, length)).astype(np.int32)
    ranks = (tokens[:, :, -1] % 2).astype(np.int32)  # even last token -> rank 0 (better)
    return tokens, np.ones_like(tokens), ranks

  import ml_collections
  cfg = ml_collections.ConfigDict(dict(steps=30, lr=1e-2, checkpoint_every=100, log_every=10))
  params = rm_lib.train_reward_model(model_def, params, batches, cfg, workdir=str(tmp_path))
  heldout = batches(10_000)
  acc = rm_lib.evaluate(model_def, params, heldout)["accuracy"]
  assert acc > 90.0, acc


def test_a_second_export_replaces_the_first(tmp_path):
  rm_lib.export_params(str(tmp_path), {"a": np.zeros(3, np.float32)})
  rm_lib.export_params(str(tmp_path), {"a": np.ones(3, np.float32)})
  np.testing.assert_array_equal(
      rm_lib.load_params(str(tmp_path), {"a": np.zeros(3, np.float32)})["a"], 1.0)
