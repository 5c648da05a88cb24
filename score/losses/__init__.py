"""Pure, jit-able RL and preference losses: arrays in, arrays out.

Modules (each a small registry of variants picked by name from configs):

* ``reduce``     -- named reductions ``"token"``, ``"sequence"``, ``"constant"``.
* ``kl``         -- KL estimators ``k1``/``k2``/``k3`` and placements ``"reward"``/``"loss"``.
* ``pg``         -- advantage estimators (``reinforce``, ``rloo``, ``grpo`` with its std and
  scaling by name, ``dr_grpo``),
  per-turn credit, the policy-gradient loss.
* ``ppo``        -- clipped surrogate (clip-higher, dual-clip), GSPO / GSPO-token by name,
  clipped value loss, GAE.
* ``importance`` -- sampler/trainer mismatch metrics and truncated importance weights (TIS).
* ``score``      -- SCoRe Stage I / Stage II objectives and reward shaping.
* ``preference`` -- DPO, cDPO, IPO, SimPO, Bradley–Terry (K-choose-2).
* ``shaping``    -- Kimi k1.5 length penalty, DAPO overlong penalty, no-EOS penalty.
* ``sft``        -- masked token cross-entropy.

This package imports nothing else of ``score``.
"""

from score.losses import importance
from score.losses import kl
from score.losses import pg
from score.losses import ppo
from score.losses import preference
from score.losses import reduce
from score.losses import score
from score.losses import sft
from score.losses import shaping

__all__ = ["importance", "kl", "pg", "ppo", "preference", "reduce", "score", "sft", "shaping"]
