"""Standalone DPO on JSONL preferences (`score.trainers.dpo.train`, configs/dpo.py)."""

import json
import math
import os

import numpy as np
import pytest

from score.data import self_rewarding as sr
from score.trainers import dpo


class _CharCodec:
  """One id per character, EOS 99; prompts rendered as "Q" + text (a stand-in for `Codec`)."""
  eos_ids, pad_id = (99,), 0

  def example(self, prompt, response, max_len):
    p, r = [ord(c) for c in "Q" + prompt], [ord(c) for c in response] + [99]
    if len(p) + len(r) > max_len:
      return None
    return p + r, [0] * len(p) + [1] * len(r)


def test_preference_pairs_best_against_worst_drop_ties_and_long_texts():
  ranked = [sr.RankedPrompt("a", ("mid", "best", "worst", "worse?"), (1, 0, 3, 2)),
            sr.RankedPrompt("b", ("x", "y"), (0, 0)),  # all tied: no preference
            sr.RankedPrompt("c", ("ok", "a much longer response"), (0, 1))]  # too long
  pairs, dropped = dpo.preference_pairs(_CharCodec(), ranked, max_len=12)
  assert dropped == 2 and len(pairs) == 1
  chosen, chosen_mask, rejected, rejected_mask = pairs[0]
  assert chosen == [ord(c) for c in "Qabest"] + [99]
  assert chosen_mask == [0, 0, 1, 1, 1, 1, 1]  # the loss is on the response and its EOS
  assert rejected == [ord(c) for c in "Qaworst"] + [99] and sum(rejected_mask) == 6


def test_dpo_runlocal_end_to_end(tmp_path):
  """configs/dpo.py:runlocal: held-out DPO loss starts at log 2 (policy = reference) and
  falls; the exported checkpoint loads and differs from the initial model."""
  from configs import dpo as dpo_config  # pylint: disable=g-import-not-at-top
  from score.models import hf  # pylint: disable=g-import-not-at-top
  results = dpo.train(dpo_config.get_config("runlocal"), str(tmp_path))
  init, trained = results["init"], results["trained"]
  assert init["pairs"] == trained["pairs"] == 24
  assert init["loss"] == pytest.approx(math.log(2), abs=1e-6) and init["reward_accuracy"] == 0
  assert trained["loss"] < init["loss"] and trained["reward_accuracy"] > 0.5
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["data"]["train_pairs"] == 72 and saved["train_summary"]["steps"] == 18
  before = hf.from_pretrained(str(tmp_path / "runlocal_model"))
  after = hf.from_pretrained(str(tmp_path / "model"))
  assert not np.allclose(np.asarray(before.embed.value),
                         np.asarray(after.embed.value))
  assert os.path.exists(tmp_path / "model" / "tokenizer.json")


def test_dpo_needs_a_checkpoint(tmp_path):
  from configs import dpo as dpo_config  # pylint: disable=g-import-not-at-top
  from score.utils import config as config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError, match="model.model_dir"):
    dpo.train(dpo_config.get_config(f"train_path={tmp_path / 'p.jsonl'}"), str(tmp_path))
