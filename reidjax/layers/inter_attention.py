r"""Inter-attention of Attention-Driven ReID: adaptive fusion of part features.

Yang, Yan, Lu et al., "Attention driven person re-identification", Pattern
Recognition 2019, Sec. 3.4, Eq. 8-9 (ablation: Table 9). Equation -> code
-> test map: ``docs/papers/attdriven.md``.

Given the part features E_i (i = 1..K, the paper's K = 4 body parts, each
(N, D_i)), ``InterAttention`` returns the fused local feature E_l:

* ``fusion="inter"`` (the paper): one fully-connected layer per part gives
  a scalar weight mu_i = sigmoid(w_i . E_i + b_i) (N,) (Eq. 8), and
  E_l = [(1 + mu_1) E_1, ..., (1 + mu_K) E_K] (Eq. 9; "[,]" concatenation,
  the residual form of Eq. 7).
* ``fusion="concat"``: E_l = [E_1, ..., E_K] (Table 9's "Concatenation";
  the model then trains no fused classifier: "concatenation of global and
  local features in testing stage").
* ``fusion="fc"``: E_l = W [E_1, ..., E_K] + b, one fully-connected layer
  with the width of the concatenation (Table 9's "FC fusion"; the paper
  fuses the global feature in this FC too, ``global_feature``; the width is
  ours).

The final feature (Sec. 3.4: "the same weight to the global feature E_g")
is [E_g, E_l] (``fuse``); with ``fusion="fc"`` and a global feature the FC
reads [E_g, E_1..E_K] and its output is the final feature.
Weights in float32; Flax's default initialisation (mu_i starts near
sigmoid(0) = 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

FUSIONS = ("inter", "concat", "fc")


def check_fusion(fusion: str) -> str:
  if fusion not in FUSIONS:
    raise ValueError(f"model.fusion must be one of {FUSIONS}, got {fusion!r}.")
  return fusion


class InterAttention(nn.Module):
  """Fuses part features (Eq. 8-9) and, optionally, the global feature.

  Attributes:
    fusion: ``"inter"`` | ``"concat"`` | ``"fc"`` (module doc).
  """

  fusion: str

  @nn.compact
  def __call__(self, part_features: Sequence[jax.Array],
               global_feature: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Fuses the features.

    Args:
      part_features: K arrays (N, D_i), E_1..E_K (may be empty when
        ``global_feature`` is given).
      global_feature: (N, D_g) E_g, or None (parts only).

    Returns:
      (fused (N, D) float32, aux): D = D_g + sum D_i; aux holds ``weights``
      mu (N, K) for ``fusion="inter"``.
    """
    check_fusion(self.fusion)
    parts = [jnp.asarray(e, jnp.float32) for e in part_features]
    if not parts and global_feature is None:
      raise ValueError("InterAttention needs part features or a global feature.")
    aux: dict[str, jax.Array] = {}
    head = [] if global_feature is None else [jnp.asarray(global_feature, jnp.float32)]
    if self.fusion == "inter" and parts:
      weights = jnp.stack(
          [jax.nn.sigmoid(nn.Dense(1, name=f"part{i + 1}_weight")(e)[:, 0])
           for i, e in enumerate(parts)], axis=1)
      aux["weights"] = weights
      parts = [(1.0 + weights[:, i:i + 1]) * e for i, e in enumerate(parts)]
    fused = jnp.concatenate(head + parts, axis=1)
    if self.fusion == "fc":
      fused = nn.Dense(fused.shape[-1], name="fc")(fused)
    return fused, aux
