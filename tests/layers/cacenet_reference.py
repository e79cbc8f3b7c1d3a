"""Independent NumPy (float64) CACE-Net pieces, for the layer tests.

Paper equations (Yu et al. 2020, Eq. 2-4, 6-7) written entry by entry with
loops, and a transcription of what the authors' published PyTorch code
computes (YouReID ``PairGraph``, ``NonLocal``, ``GeneralizedMeanPoolingP``)
in its own channel-first layout and order of operations (identity-matrix
masks, a diagonal degree *matrix*, ``where`` on it, matrix products). They
share nothing with the JAX code but the equations. Flax 1x1 conv kernels
(1, 1, C_in, C_out) are read as W[c_in, c_out].
"""

import numpy as np


def f64(a):
  return np.asarray(a, np.float64)


# ---- paper: Eq. 2-4 -------------------------------------------------------


def bilinear_diagonal(x_a, x_b, w):
  """S[i, j] = sum_d x_a[i, d] w[d] x_b[j, d] (Eq. 2 with x_b = x_a, Eq. 3)."""
  x_a, x_b, w = f64(x_a), f64(x_b), f64(w)
  s = np.zeros((len(x_a), len(x_b)))
  for i in range(len(x_a)):
    for j in range(len(x_b)):
      s[i, j] = sum(x_a[i, d] * w[d] * x_b[j, d] for d in range(len(w)))
  return s


def joint_adjacency(s_u, s_uv, s_vu, s_v):
  """Eq. 4: ReLU of the 2 x 2 block matrix."""
  return np.maximum(np.block([[s_u, s_uv], [s_vu, s_v]]), 0.0)


def correspondence(x_u, x_v, w, w_prime):
  """A of one pair, Eq. 2-4; x (N, D)."""
  return joint_adjacency(bilinear_diagonal(x_u, x_u, w), bilinear_diagonal(x_u, x_v, w_prime),
                         bilinear_diagonal(x_v, x_u, w_prime), bilinear_diagonal(x_v, x_v, w))


# ---- paper: Eq. 6-7 -------------------------------------------------------


def normalized_adjacency(a, eps):
  """A_hat[i, j] = a_ij / sqrt(d_i d_j), d = row sums; 0 where d_i or d_j <= eps."""
  a = f64(a)
  m = len(a)
  degree = [sum(a[i, j] for j in range(m)) for i in range(m)]
  out = np.zeros_like(a)
  for i in range(m):
    for j in range(m):
      if degree[i] > eps and degree[j] > eps:
        out[i, j] = a[i, j] / np.sqrt(degree[i] * degree[j])
  return out


def graph_convolution(x, a, kernel, mode, eps, bias=None):
  """Eq. 7 (discrepancy: theta (I - A_hat) X) or Eq. 6 (smoothing: theta (I + A_hat) X)."""
  x = f64(x)
  sign = -1.0 if mode == "discrepancy" else 1.0
  operator = np.eye(len(x)) + sign * normalized_adjacency(a, eps)
  out = operator @ x @ f64(kernel)
  return out if bias is None else out + f64(bias)


# ---- official code --------------------------------------------------------


def _conv1x1_chw(x_chw, kernel):
  """A bias-free 1x1 conv on (C_in, P) -> (C_out, P); kernel (1, 1, C_in, C_out)."""
  w = f64(kernel)[0, 0]  # (C_in, C_out)
  return w.T @ x_chw


def pair_graph_laplacian(y_cp, degree_floor=1e-3, frozen_normalizer=None):
  """Steps 2-5 of PairGraph as the code orders them; y (C', P) -> f (P, P).

  ``frozen_normalizer`` replaces the computed normaliser matrix (to test the
  gradient of the detached version by finite differences).
  """
  y = f64(y_cp)
  y = y / (np.sqrt((y ** 2).sum(axis=0, keepdims=True)) + 1e-12)  # normalize(y, axis=1)
  p = y.shape[1]
  coef = np.maximum(y.T @ y, 0.0)
  eye = np.eye(p)
  adja = coef * (1.0 - eye)
  degree = adja.sum(axis=-1, keepdims=True) * eye  # diagonal degree matrix
  temp = np.where(degree > degree_floor, degree, np.ones_like(degree))
  norm = (1.0 / np.sqrt(temp)) * eye
  if frozen_normalizer is not None:
    norm = frozen_normalizer
  return norm @ (degree - adja) @ norm, norm


def pair_graph(x_hwc, params, degree_floor=1e-3, frozen_normalizer=None):
  """PairGraph on one width-concatenated map x (H, 2W, C) -> (H, 2W, C)."""
  x = f64(x_hwc)
  h, w, c = x.shape
  x_chw = x.reshape(h * w, c).T  # (C, P), the code's b, c, h*w layout
  y = _conv1x1_chw(x_chw, params["embed_y"]["kernel"])
  f, norm = pair_graph_laplacian(y, degree_floor, frozen_normalizer)
  g = _conv1x1_chw(x_chw, params["embed_g"]["kernel"])  # (C', P)
  o = g @ f  # (C', P)
  o = _conv1x1_chw(o, params["output"]["kernel"])  # (C, P)
  return (x_chw + o).T.reshape(h, w, c), norm


def non_local(x_hwc, params):
  """NonLocal (embedded Gaussian, no BN): x (H, W, C) -> (H, W, C), position by position."""
  x = f64(x_hwc)
  h, w, c = x.shape
  flat = x.reshape(h * w, c)

  def conv(name, t):
    return t @ f64(params[name]["kernel"])[0, 0] + f64(params[name]["bias"])

  theta, phi, g = conv("theta", flat), conv("phi", flat), conv("g", flat)
  y = np.zeros_like(g)
  for i in range(len(flat)):
    scores = np.array([theta[i] @ phi[j] for j in range(len(flat))])
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    y[i] = sum(weights[j] * g[j] for j in range(len(flat)))
  return (flat + conv("output", y)).reshape(h, w, c)


def gem(x_nhwc, p, eps):
  """GeM: (mean over H, W of max(x, eps)^p)^(1/p); (N, H, W, C) -> (N, C)."""
  x = np.maximum(f64(x_nhwc), eps)
  return np.mean(x ** p, axis=(1, 2)) ** (1.0 / p)
