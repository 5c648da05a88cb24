"""Preference losses (DPO family) and Bradley–Terry reward-model losses.

Inputs are per-example *sequence* log-probabilities -- sums of the response tokens'
log-probs, not length-normalised, unless the variant says so (SimPO normalises by length).
Every loss is per example (unreduced) and uses ``jax.nn.log_sigmoid`` so that large margins
give finite values and gradients.

* DPO (Rafailov et al. 2023, arXiv 2305.18290), with label smoothing = conservative DPO
  (Mitchell 2023, "A note on DPO with noisy preferences"):
  ``h = (πc − rc) − (πr − rr)``, ``L = −(1 − ε) log σ(βh) − ε log σ(−βh)``.
* IPO (Azar et al. 2023, arXiv 2310.12036): ``L = (h − 1/(2β))²``.
* RPO's NLL term (Pang et al. 2024, arXiv 2404.19733, "Iterative Reasoning Preference
  Optimization", from the Self-Rewarding authors): ``L = L_DPO + α · (−πc / |yc|)`` keeps the
  chosen response likely while DPO pushes the pair apart.
* SimPO (Meng et al. 2024, arXiv 2405.14734):
  ``L = −log σ(β/|yc| · πc − β/|yr| · πr − γ)`` (no reference model).
* Bradley–Terry reward model (InstructGPT, Ouyang et al. 2022, arXiv 2203.02155):
  ``L = −log σ(r(x, y_w) − r(x, y_l))``, all K-choose-2 pairs of a prompt in one batch element.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import jax.numpy as jnp


def _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                      ref_rejected_logps):
  ref_chosen_logps = jax.lax.stop_gradient(ref_chosen_logps)
  ref_rejected_logps = jax.lax.stop_gradient(ref_rejected_logps)
  return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
        *, label_smoothing=0.0):
  """Per-example DPO loss ``−(1 − ε) log σ(βh) − ε log σ(−βh)``, ``h = (πc − rc) − (πr − rr)``.

  ``label_smoothing = ε ∈ [0, 0.5)`` is conservative DPO (preferences flipped with
  probability ε); ``ε = 0`` is plain DPO. The reference log-probs are constants.
  The gradient w.r.t. ``πc`` is ``−β[(1 − ε) σ(−βh) − ε σ(βh)]`` and the opposite for ``πr``.
  """
  logits = beta * _log_ratio_margin(policy_chosen_logps, policy_rejected_logps,
                                    ref_chosen_logps, ref_rejected_logps)
  return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
          - label_smoothing * jax.nn.log_sigmoid(-logits))


def ipo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
  """Per-example IPO loss ``(h − 1/(2β))²`` with ``h = (πc − rc) − (πr − rr)`` (Azar et al.).

  The paper's ``h`` uses sequence log-probs (sums); pass per-token means for TRL's variant.
  """
  margin = _log_ratio_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                             ref_rejected_logps)
  return jnp.square(margin - 1.0 / (2.0 * beta))


def chosen_nll(policy_chosen_logps, chosen_len):
  """Per-example length-normalised NLL of the chosen response ``−πc / |yc|`` (RPO's extra
  term; Pang et al. 2024 use it with weight α = 1). Lengths below 1 are treated as 1."""
  chosen_len = jnp.maximum(jnp.asarray(chosen_len, jnp.float32), 1.0)
  return -policy_chosen_logps / chosen_len


def simpo(policy_chosen_logps, policy_rejected_logps, chosen_len, rejected_len, beta, gamma):
  """Per-example SimPO loss ``−log σ(β·πc/|yc| − β·πr/|yr| − γ)`` (Meng et al. 2024).

  Length-normalised, reference-free; ``γ`` is the target reward margin (paper: β 2–2.5,
  γ 0.5–1.6 depending on the model). Lengths below 1 are treated as 1 (no division by 0).
  """
  chosen_len = jnp.maximum(jnp.asarray(chosen_len, jnp.float32), 1.0)
  rejected_len = jnp.maximum(jnp.asarray(rejected_len, jnp.float32), 1.0)
  logits = beta * policy_chosen_logps / chosen_len - beta * policy_rejected_logps / rejected_len
  return -jax.nn.log_sigmoid(logits - gamma)


PREFERENCE_LOSSES: dict[str, Callable] = {"dpo": dpo, "ipo": ipo, "simpo": simpo}


def preference_loss(kind, *, policy_chosen_logps, policy_rejected_logps, beta,
                    ref_chosen_logps=None, ref_rejected_logps=None, chosen_len=None,
                    rejected_len=None, label_smoothing=0.0, gamma=0.0):
  """Per-example loss ``PREFERENCE_LOSSES[kind]`` with keyword arguments, for configs.

  ``"dpo"`` and ``"ipo"`` need the reference log-probs; ``"simpo"`` needs the lengths.
  """
  if kind not in PREFERENCE_LOSSES:
    raise ValueError(
        f"preference_loss: unknown kind {kind!r}; expected one of {sorted(PREFERENCE_LOSSES)}.")
  if kind == "simpo":
    if chosen_len is None or rejected_len is None:
      raise ValueError("preference_loss: 'simpo' needs chosen_len and rejected_len.")
    return simpo(policy_chosen_logps, policy_rejected_logps, chosen_len, rejected_len, beta, gamma)
  if ref_chosen_logps is None or ref_rejected_logps is None:
    raise ValueError(f"preference_loss: {kind!r} needs ref_chosen_logps and ref_rejected_logps.")
  if kind == "dpo":
    return dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
               beta, label_smoothing=label_smoothing)
  return ipo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)


def implicit_rewards(policy_logps, ref_logps, beta):
  """DPO's implicit reward ``β (log πθ(y) − log πref(y))`` (for metrics; stop-gradient)."""
  return jax.lax.stop_gradient(beta * (policy_logps - ref_logps))


def bradley_terry(r_chosen, r_rejected):
  """Per-pair Bradley–Terry reward-model loss ``−log σ(r_chosen − r_rejected)``."""
  return -jax.nn.log_sigmoid(r_chosen - r_rejected)


def ranked_pairs(num_responses):
  """The K-choose-2 index pairs ``(i_P, j_P)`` with ``i < j`` as two int arrays."""
  pairs = list(itertools.combinations(range(num_responses), 2))
  if not pairs:
    return jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.int32)
  i_P, j_P = zip(*pairs)
  return jnp.asarray(i_P, jnp.int32), jnp.asarray(j_P, jnp.int32)


def bradley_terry_k_choose_2(rewards_BxK, ranks_BxK=None, valid_BxK=None):
  """InstructGPT reward-model loss over all K-choose-2 pairs of each prompt's K responses.

  ``L_b = mean over pairs (i, j) with rank_i ≠ rank_j of −log σ(r_winner − r_loser)``,
  where a lower rank is better (rank 0 = best). ``ranks_BxK=None`` means the responses are
  already sorted best-first. Tied pairs are skipped; a prompt with no strict pair gives 0.
  ``valid_BxK`` (None: all valid) marks real responses: pairs with a padding slot (a prompt
  with fewer than K responses) are skipped too.
  All pairs of a prompt stay in one batch element (one forward pass per response), as in
  InstructGPT, which avoids over-fitting from reusing a response across batch elements.

  Returns the per-prompt loss ``[B]``.
  """
  if jnp.ndim(rewards_BxK) != 2:
    raise ValueError(
        f"bradley_terry_k_choose_2: expected rewards_BxK [B, K], got {jnp.shape(rewards_BxK)}.")
  num_responses = rewards_BxK.shape[1]
  i_P, j_P = ranked_pairs(num_responses)
  if ranks_BxK is None:
    ranks_BxK = jnp.broadcast_to(jnp.arange(num_responses), rewards_BxK.shape)
  ranks_BxK = jnp.asarray(ranks_BxK)
  # +1 where response i is preferred (lower rank), −1 where j is, 0 for ties.
  sign_BxP = jnp.sign(ranks_BxK[:, j_P] - ranks_BxK[:, i_P]).astype(rewards_BxK.dtype)
  margin_BxP = sign_BxP * (rewards_BxK[:, i_P] - rewards_BxK[:, j_P])
  valid_BxP = (sign_BxP != 0).astype(rewards_BxK.dtype)
  if valid_BxK is not None:
    valid_BxK = jnp.asarray(valid_BxK).astype(rewards_BxK.dtype)
    valid_BxP = valid_BxP * valid_BxK[:, i_P] * valid_BxK[:, j_P]
  loss_BxP = -jax.nn.log_sigmoid(margin_BxP) * valid_BxP
  return jnp.sum(loss_BxP, axis=1) / jnp.maximum(jnp.sum(valid_BxP, axis=1), 1.0)
