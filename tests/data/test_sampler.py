"""Tests for the P x K identity sampler."""

import itertools

import numpy as np
import pytest

from reidjax.data.sampler import IdentitySampler

P, K = 6, 4


def _pids(num_ids=27, seed=0):
  """(N,) pids: ids 100..100+num_ids-1 with 1..9 images each, shuffled."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(1, 10, num_ids)
  counts[:3] = [1, 2, 3]  # Make sure some ids have fewer than K images.
  counts[3] = K  # And one has exactly K.
  pids = np.repeat(np.arange(100, 100 + num_ids), counts)
  return rng.permutation(pids).astype(np.int32)


def test_steps_per_epoch_floors_ids_over_p():
  sampler = IdentitySampler(_pids(27), P, K, seed=0)
  assert sampler.steps_per_epoch == 27 // P == 4
  assert sampler.global_batch_size == sampler.local_batch_size == P * K


def test_every_batch_is_p_distinct_ids_times_k():
  pids = _pids()
  sampler = IdentitySampler(pids, P, K, seed=3)
  for step in range(3 * sampler.steps_per_epoch):
    batch = sampler.global_batch(step)
    assert batch.shape == (P * K,)
    assert batch.min() >= 0 and batch.max() < pids.size
    groups = pids[batch].reshape(P, K)
    # Identity-major layout: each row of K is one id, and the P ids differ.
    assert (groups == groups[:, :1]).all()
    assert np.unique(groups[:, 0]).size == P


def test_identities_do_not_repeat_within_an_epoch():
  pids = _pids()
  sampler = IdentitySampler(pids, P, K, seed=1)
  spe = sampler.steps_per_epoch
  for epoch in range(3):
    ids = [pids[sampler.global_batch(epoch * spe + i)][::K] for i in range(spe)]
    ids = np.concatenate(ids)
    assert np.unique(ids).size == spe * P
  # Epochs shuffle differently.
  first = [pids[sampler.global_batch(i)][::K] for i in range(spe)]
  second = [pids[sampler.global_batch(spe + i)][::K] for i in range(spe)]
  assert not np.array_equal(np.concatenate(first), np.concatenate(second))


def test_replacement_only_for_ids_with_fewer_than_k_images():
  pids = _pids()
  counts = dict(zip(*np.unique(pids, return_counts=True)))
  sampler = IdentitySampler(pids, P, K, seed=7)
  drawn_small = []  # Indices drawn for ids with < K images.
  for step in range(40 * sampler.steps_per_epoch):
    for row in sampler.global_batch(step).reshape(P, K):
      if counts[pids[row[0]]] >= K:
        assert np.unique(row).size == K, (step, row)
      else:
        drawn_small.append(row)
  drawn_small = np.concatenate(drawn_small)
  # Every image of the small ids gets drawn (with repeats: K > its count).
  small = np.flatnonzero(np.isin(pids, [p for p, n in counts.items()
                                        if n < K]))
  assert set(drawn_small) == set(small)


def test_deterministic_in_seed():
  pids = _pids()
  a = IdentitySampler(pids, P, K, seed=5)
  b = IdentitySampler(pids, P, K, seed=5)
  c = IdentitySampler(pids, P, K, seed=6)
  steps = range(0, 20, 3)
  for step in steps:
    np.testing.assert_array_equal(a.global_batch(step), b.global_batch(step))
  assert any(not np.array_equal(a.global_batch(s), c.global_batch(s))
             for s in steps)


def test_process_slices_concatenate_to_global_batch():
  pids = _pids()
  single = IdentitySampler(pids, P, K, seed=2)
  procs = [IdentitySampler(pids, P, K, seed=2, process_index=i,
                           process_count=3) for i in range(3)]
  assert all(p.local_batch_size == P * K // 3 for p in procs)
  for step in (0, 1, 5, 17):
    parts = [p.local_batch(step) for p in procs]
    np.testing.assert_array_equal(np.concatenate(parts),
                                  single.global_batch(step))


def test_start_step_resumes_the_stream():
  pids = _pids()
  sampler = IdentitySampler(pids, P, K, seed=4)
  full = list(itertools.islice(sampler.batches(0), 11))
  # A fresh sampler (no cached epoch) resuming mid-epoch-2.
  resumed = IdentitySampler(pids, P, K, seed=4)
  tail = list(itertools.islice(resumed.batches(6), 5))
  for x, y in zip(full[6:], tail, strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_identities=6, num_instances=1), r"data\.num_instances"),
        (dict(num_identities=0, num_instances=4), r"data\.num_identities"),
        (dict(num_identities=28, num_instances=4),
         r"data\.num_identities.*exceeds.*27"),
        (dict(num_identities=5, num_instances=3, process_count=2),
         r"data\.num_identities \* data\.num_instances.*15.*\(2\)"),
        (dict(num_identities=6, num_instances=4, process_index=2,
              process_count=2), r"process_index"),
    ])
def test_bad_config_errors_name_the_keys(kwargs, match):
  with pytest.raises(ValueError, match=match):
    IdentitySampler(_pids(27), seed=0, **kwargs)
