"""Independent NumPy (float64) DuATM, Si et al. CVPR 2018, Eq. 1-5.

One pair at a time, one position at a time, on the *valid* part of each
sequence only (padding is sliced off before any equation is applied), so
it shares nothing with the batched JAX code but the equations.
"""

import numpy as np


def transform(x, params, mean, var, epsilon=1e-5):
  """Eq. 1, q^i = ReLU(BN(W x^i + b)) with given BN statistics; x (S, D)."""
  kernel = np.asarray(params["transform"]["kernel"], np.float64)
  bias = np.asarray(params["transform"]["bias"], np.float64)
  scale = np.asarray(params["norm"]["scale"], np.float64)
  shift = np.asarray(params["norm"]["bias"], np.float64)
  q = np.zeros_like(x)
  for i in range(len(x)):
    h = kernel.T @ x[i] + bias  # W x + b with W = kernel^T (Flax layout).
    h = (h - mean) / np.sqrt(var + epsilon) * scale + shift
    q[i] = np.maximum(h, 0.0)
  return q


def attend(q, memory):
  """Eq. 2-3: out^i = sum_m softmax_m(<q^i, memory^m>) memory^m."""
  out = np.zeros((len(q), memory.shape[1]))
  for i in range(len(q)):
    logits = np.array([q[i] @ memory[m] for m in range(len(memory))])
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    for m in range(len(memory)):
      out[i] += weights[m] * memory[m]
  return out


def duatm_distance(x_a, x_b, q_a, q_b, intra=True, inter=True):
  """Eq. 4-5 for one pair of unpadded sequences (S_a, D), (S_b, D).

  intra=False: x_bar = x. inter=False: distance of the mean (refined)
  vectors (the module's documented reading of the Table 2 ablations).
  """
  x_bar_a = attend(q_a, x_a) if intra else x_a
  x_bar_b = attend(q_b, x_b) if intra else x_b
  if not inter:
    return np.linalg.norm(x_bar_a.mean(0) - x_bar_b.mean(0))
  x_hat_b = attend(q_a, x_b)  # aligned to a's positions, from b.
  x_hat_a = attend(q_b, x_a)
  d_a = [np.linalg.norm(x_bar_a[i] - x_hat_b[i]) for i in range(len(x_a))]
  d_b = [np.linalg.norm(x_bar_b[j] - x_hat_a[j]) for j in range(len(x_b))]
  return sum(d_a) / (2 * len(x_a)) + sum(d_b) / (2 * len(x_b))


def unpad(x, mask):
  """List of (S_k, D) float64 arrays of the valid positions."""
  return [np.asarray(x[k], np.float64)[np.asarray(mask[k], bool)]
          for k in range(len(x))]


def distance_matrix(xs_a, xs_b, params, mean, var, intra=True, inter=True):
  """(Na, Nb) DuATM distances of lists of unpadded sequences."""
  qs_a = [transform(x, params, mean, var) for x in xs_a]
  qs_b = [transform(x, params, mean, var) for x in xs_b]
  return np.array([[duatm_distance(xa, xb, qa, qb, intra, inter)
                    for xb, qb in zip(xs_b, qs_b)]
                   for xa, qa in zip(xs_a, qs_a)])


def batch_statistics(xs, params):
  """BN training statistics over all valid positions: mean, biased var."""
  kernel = np.asarray(params["transform"]["kernel"], np.float64)
  bias = np.asarray(params["transform"]["bias"], np.float64)
  h = np.concatenate([x @ kernel + bias for x in xs])
  return h.mean(0), h.var(0)
