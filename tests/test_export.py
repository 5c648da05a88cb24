"""`score.export`: a trainer's flat-params orbax checkpoint -> Hugging Face, checked by logits.

The parity test follows a policy the way a run does: a tiny Qwen2/Llama made by
`transformers`, loaded by score, params changed (as training would) and saved as the trainers
save them (`{"params": flat dict, "opt_state": ...}` through `score.utils.checkpoint`), then
exported and loaded back by `transformers.AutoModelForCausalLM`: its logits must be score's
logits of the *changed* params (and not those of the base model or of an earlier step).
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import per_layer_layout

from score import export as export_lib
from score.models import hf
from score.trainers import common
from score.utils import checkpoint as ckpt_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 64
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
FAMILIES = {"qwen2": lambda: transformers.Qwen2Config(**COMMON),
            "llama": lambda: transformers.LlamaConfig(**COMMON)}


def _hf_base(family, path):
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(FAMILIES[family](),
                                                         attn_implementation="eager")
  model.save_pretrained(path)
  return path


def _perturbed(params, seed, scale=0.1):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(np.asarray(v) + scale * rng.standard_normal(v.shape).astype(v.dtype))
          for k, v in params.items()}


def _save(phase_dir, step, params):
  """As `score.trainers.common.train_loop` saves a phase: params + Adam state."""
  ckpt = ckpt_lib.Checkpointer(phase_dir, every=1)
  ckpt.save(step, {"params": params, "opt_state": optax.adam(1e-3).init(params)},
            {"data": step}, force=True)
  ckpt.close()


def _hf_logits(path, tokens):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
  with torch.no_grad():
    return model.eval().float()(input_ids=torch.as_tensor(tokens)).logits.numpy()


def _tokens(vocab, seed=0, shape=(2, 9)):
  return np.random.default_rng(seed).integers(3, vocab, size=shape).astype(np.int64)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_roundtrip_logit_parity(tmp_path, family):
  base_dir = _hf_base(family, str(tmp_path / "base"))
  policy, params = common.Policy.split(hf.from_pretrained(base_dir))
  phase = str(tmp_path / "run" / "checkpoints" / "score" / "r0_stage2")
  step1, step2 = _perturbed(params, 1), _perturbed(params, 2)
  _save(phase, 1, step1)
  _save(phase, 2, step2)

  out = str(tmp_path / "hf")
  record = export_lib.export(phase, out, base=base_dir)  # the phase's latest step: 2
  assert record["step"] == 2 and record["model_type"] == family
  assert os.path.exists(os.path.join(out, "model.safetensors"))

  tokens = _tokens(VOCAB)
  theirs = _hf_logits(out, tokens)
  ours = np.asarray(policy.model(step2)(jnp.asarray(tokens, jnp.int32)))
  np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=2e-4)
  # The exported weights are the trained ones, not the base model's or step 1's.
  for other in (params, step1):
    assert np.abs(np.asarray(policy.model(other)(jnp.asarray(tokens, jnp.int32))) - theirs
                  ).max() > 1e-2

  record1 = export_lib.export(phase, str(tmp_path / "hf1"), base=base_dir, step=1)
  assert record1["step"] == 1
  np.testing.assert_allclose(
      _hf_logits(str(tmp_path / "hf1"), tokens),
      np.asarray(policy.model(step1)(jnp.asarray(tokens, jnp.int32))), atol=2e-4, rtol=2e-4)


def test_export_reads_a_checkpoint_saved_per_layer(tmp_path):
  """A checkpoint written before the decoder blocks were stacked (params keyed per layer)
  exports the trained weights: transformers reproduces the stacked model's logits."""
  base_dir = _hf_base("llama", str(tmp_path / "base"))
  policy, params = common.Policy.split(hf.from_pretrained(base_dir))
  trained = _perturbed(params, 4)
  phase = str(tmp_path / "run" / "checkpoints" / "score" / "r0_stage1")
  _save(phase, 1, per_layer_layout(trained))
  out = str(tmp_path / "hf")
  export_lib.export(phase, out, base=base_dir)
  tokens = _tokens(VOCAB)
  np.testing.assert_allclose(
      _hf_logits(out, tokens), np.asarray(policy.model(trained)(jnp.asarray(tokens, jnp.int32))),
      atol=2e-4, rtol=2e-4)


def test_export_synthetic_run_with_char_tokenizer(tmp_path):
  """A fresh tiny model of the synthetic config: layout from the run's config.json, a char
  tokenizer with the task's ids, and logits that transformers reproduces."""
  from configs import score_synthetic
  from score.trainers import envs
  from score.utils import config as config_lib

  config = score_synthetic.get_config("runlocal")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(config), default=str))
  (workdir / "run_info.json").write_text(json.dumps({"commit": "abc123"}))
  env = envs.make_env(config)
  chars = env.tokenizer
  policy, params = common.Policy.split(
      common.build_model(config.model, chars.vocab_size, seed=config.seed))
  trained = _perturbed(params, 3)
  step_dir = workdir / "checkpoints" / "score" / "r0_stage2"
  _save(str(step_dir), 3, trained)

  out = str(tmp_path / "hf")
  assert export_lib.main(["--checkpoint", str(step_dir / "3"), "--out", out]) == 0
  record = json.loads(open(os.path.join(out, "score_export.json")).read())
  assert record["commit"] == "abc123" and record["step"] == 3
  assert record["tokenizer"] == "synthetic character vocabulary"

  tok = transformers.AutoTokenizer.from_pretrained(out)
  text = "1234+5678=6912?r2196"
  assert tok.encode(text, add_special_tokens=False) == chars.encode(text)
  assert tok.decode(chars.encode(text)) == text
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
      chars.bos_id, chars.eos_id, chars.pad_id)
  hf_config = json.loads(open(os.path.join(out, "config.json")).read())
  assert hf_config["eos_token_id"] == chars.eos_id and hf_config["bos_token_id"] == chars.bos_id

  tokens = np.array([[chars.bos_id] + chars.encode("1234+5678=")])
  np.testing.assert_allclose(
      _hf_logits(out, tokens), np.asarray(policy.model(trained)(jnp.asarray(tokens, jnp.int32))),
      atol=2e-4, rtol=2e-4)


def test_export_errors_say_what_to_pass(tmp_path):
  base_dir = _hf_base("llama", str(tmp_path / "base"))
  policy, params = common.Policy.split(hf.from_pretrained(base_dir))
  workdir = tmp_path / "run"
  phase = workdir / "checkpoints" / "score" / "r0_stage1"
  _save(str(phase), 4, params)

  with pytest.raises(export_lib.ExportError, match="is a workdir.*r0_stage1"):
    export_lib.export(str(workdir), str(tmp_path / "out"), base=base_dir)
  with pytest.raises(export_lib.ExportError, match=r"no step 7 .*saved steps: \[4\]"):
    export_lib.export(str(phase), str(tmp_path / "out"), base=base_dir, step=7)
  with pytest.raises(export_lib.ExportError, match="no --base given and no config.json"):
    export_lib.export(str(phase), str(tmp_path / "out"))

  other = str(tmp_path / "other")  # a different layout: wider MLP
  torch.manual_seed(0)
  transformers.AutoModelForCausalLM.from_config(
      transformers.LlamaConfig(**{**COMMON, "intermediate_size": 48})).save_pretrained(other)
  with pytest.raises(export_lib.ExportError, match="shape"):
    export_lib.export(str(phase), str(tmp_path / "out"), base=other)
  del policy
