"""Tests for the training samplers (P x K identity epochs, random batches)."""

import itertools

import ml_collections
import numpy as np
import pytest

from reidjax.data import sampler as sampler_lib
from reidjax.data.sampler import (ChunkedIdentitySampler, IdentitySampler,
                                  RandomSampler, build_sampler, make_sampler)

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
@pytest.mark.parametrize("cls", [IdentitySampler, ChunkedIdentitySampler])
def test_bad_config_errors_name_the_keys(kwargs, match, cls):
  with pytest.raises(ValueError, match=match):
    cls(_pids(27), seed=0, **kwargs)


# --- data.epoch = "identities": the stream before epochs existed, pinned. ---

# IdentitySampler(_pids(), 6, 4, seed=3) as computed by the implementation
# before data.epoch / data.sampler were added (commit e349c33).
_PINNED_STEPS_PER_EPOCH = 4
_PINNED = {
    0: [113, 18, 27, 27, 55, 55, 55, 55, 54, 127, 86, 57, 37, 82, 53, 19, 106,
        97, 8, 108, 111, 56, 52, 102],
    4: [52, 111, 6, 56, 3, 70, 3, 3, 115, 17, 78, 101, 43, 59, 39, 38, 72, 67,
        72, 11, 50, 62, 64, 23],
    9: [81, 84, 117, 26, 32, 32, 34, 34, 31, 4, 68, 123, 102, 52, 111, 56, 15,
        65, 46, 0, 37, 53, 82, 66],
}


def test_identities_epoch_reproduces_the_stream_before_epochs():
  for sampler in (IdentitySampler(_pids(), P, K, seed=3),
                  build_sampler(_pids(), kind="pk", epoch="identities",
                               num_identities=P, num_instances=K, seed=3)):
    assert type(sampler) is IdentitySampler
    assert sampler.steps_per_epoch == _PINNED_STEPS_PER_EPOCH
    for step, expected in _PINNED.items():
      np.testing.assert_array_equal(sampler.global_batch(step), expected)
  second_half = build_sampler(_pids(), kind="pk", epoch="identities",
                             num_identities=P, num_instances=K, seed=3,
                             process_index=1, process_count=2)
  np.testing.assert_array_equal(second_half.local_batch(9), _PINNED[9][12:])


# --- data.epoch = "images": ChunkedIdentitySampler. ---


def _pids_with_counts(counts, seed=0):
  """(N,) shuffled pids: identity 10 + j has counts[j] images."""
  pids = np.repeat(10 + np.arange(len(counts)), counts)
  return np.random.default_rng(seed).permutation(pids)


def test_images_epoch_length_hand_computed():
  # K = 4: 1 -> 1 chunk (padded), 3 -> 1 (padded), 4 -> 1, 9 -> 2 (one image
  # dropped), 13 -> 3, 7 -> 1: 9 chunks = 36 images; at P = 2, 36 // 8 = 4.
  sampler = ChunkedIdentitySampler(_pids_with_counts([1, 3, 4, 9, 13, 7]),
                                   2, 4, seed=0)
  assert sampler.num_chunks == 9
  assert sampler.steps_per_epoch == 4
  # The brief's example: 1, 3, 4, 9 images at K = 4 -> 5 chunks; P = 2 -> 2.
  sampler = ChunkedIdentitySampler(_pids_with_counts([1, 3, 4, 9]), 2, 4,
                                   seed=0)
  assert (sampler.num_chunks, sampler.steps_per_epoch) == (5, 2)


@pytest.mark.parametrize("num_ids, p, k", [(27, 6, 4), (40, 3, 2), (9, 9, 3)])
def test_images_epoch_length_matches_torchreid_len(num_ids, p, k):
  pids = _pids(num_ids, seed=num_ids)
  counts = np.unique(pids, return_counts=True)[1]
  # torchreid's RandomIdentitySampler.__len__ (images), then a DataLoader
  # with drop_last: floor(len / (P*K)) batches.
  images = sum(max(n, k) - max(n, k) % k for n in counts)
  sampler = ChunkedIdentitySampler(pids, p, k, seed=0)
  assert sampler.steps_per_epoch == images // (p * k)
  assert sampler.global_batch_size == p * k


def _epoch(sampler, epoch):
  spe = sampler.steps_per_epoch
  return np.stack([sampler.global_batch(epoch * spe + i) for i in range(spe)])


def test_images_epoch_batches_are_p_distinct_ids_times_k():
  pids = _pids()
  sampler = ChunkedIdentitySampler(pids, P, K, seed=3)
  for epoch in range(3):
    batches = _epoch(sampler, epoch)
    assert batches.shape == (sampler.steps_per_epoch, P * K)
    assert batches.min() >= 0 and batches.max() < pids.size
    groups = pids[batches].reshape(-1, P, K)
    assert (groups == groups[..., :1]).all()
    assert all(np.unique(g[:, 0]).size == P for g in groups)


def test_images_epoch_covers_every_chunk_once():
  # K = 3, P = 4: chunks 1, 1, 2, 1, 3, 1, 1, 2 = 12 = 3 * P, so all are used.
  counts = [2, 3, 7, 4, 9, 1, 5, 6]
  pids = _pids_with_counts(counts, seed=1)
  sampler = ChunkedIdentitySampler(pids, 4, 3, seed=2)
  assert sampler.steps_per_epoch == 3
  for epoch in range(4):
    shown = _epoch(sampler, epoch).ravel()
    for j, n in enumerate(counts):
      own = np.flatnonzero(pids == 10 + j)
      drawn = shown[np.isin(shown, own)]
      if n >= 3:
        # floor(n / K) * K distinct images; the n % K remainder sits out.
        assert drawn.size == np.unique(drawn).size == n - n % 3
      else:
        # Padded: all n images, plus K - n repeats.
        assert drawn.size == 3 and set(drawn) == set(own)


def test_images_epoch_leaves_out_only_the_last_chunks():
  pids = _pids()
  counts = dict(zip(*np.unique(pids, return_counts=True)))
  sampler = ChunkedIdentitySampler(pids, P, K, seed=5)
  unused_chunks = sampler.num_chunks - P * sampler.steps_per_epoch
  assert 0 < unused_chunks < P
  for epoch in range(3):
    shown = _epoch(sampler, epoch).ravel()
    missing = 0
    for pid, n in counts.items():
      drawn = shown[pids[shown] == pid]
      assert drawn.size % K == 0
      if n >= K:
        assert np.unique(drawn).size == drawn.size  # No image repeats.
      missing += (max(n, K) // K) - drawn.size // K
    assert missing == unused_chunks


def test_images_epoch_takes_a_heavy_identity_every_step():
  # P = K = 2; id 10 has 5 chunks, ids 11..15 one each: 10 chunks, 5 steps.
  # Drawing uniformly (torchreid) would usually leave id 10 alone at the end;
  # here it must be in all 5 batches, and every image is shown exactly once.
  pids = _pids_with_counts([10, 2, 2, 2, 2, 2], seed=3)
  sampler = ChunkedIdentitySampler(pids, 2, 2, seed=0)
  assert sampler.steps_per_epoch == 5
  for epoch in range(5):
    batches = _epoch(sampler, epoch)
    assert all(10 in pids[b] for b in batches)
    np.testing.assert_array_equal(np.sort(batches.ravel()),
                                  np.arange(pids.size))


def test_images_epoch_refills_when_one_identity_dominates():
  # P = K = 2; id 10 has 4 chunks, ids 11, 12 one each: 6 chunks, 3 steps,
  # but no 3 batches of 2 distinct ids use 3 chunks of id 10. Steps 0 and 1
  # take id 10 with 11 and 12; step 2 finds only id 10 holding chunks and
  # refills everyone from a fresh shuffle (id 10's old chunks come first).
  pids = _pids_with_counts([8, 2, 2], seed=4)
  sampler = ChunkedIdentitySampler(pids, 2, 2, seed=0)
  assert sampler.steps_per_epoch == 3
  for epoch in range(6):
    batches = _epoch(sampler, epoch)
    ids = pids[batches][:, ::2]
    assert all(np.unique(row).size == 2 for row in ids)
    assert (ids[:2] == 10).any(1).all()
    np.testing.assert_array_equal(np.sort(ids[:2][ids[:2] != 10]), [11, 12])
    heavy = batches.ravel()[pids[batches.ravel()] == 10]
    assert np.unique(heavy).size == heavy.size  # Old chunks before new.


def test_images_epoch_deterministic_and_resumable():
  pids = _pids()
  sampler = ChunkedIdentitySampler(pids, P, K, seed=4)
  spe = sampler.steps_per_epoch
  full = list(itertools.islice(sampler.batches(0), 3 * spe))
  for start in (1, spe - 1, spe, 2 * spe + 1):
    resumed = ChunkedIdentitySampler(pids, P, K, seed=4)  # Empty cache.
    tail = list(itertools.islice(resumed.batches(start), 3 * spe - start))
    for x, y in zip(full[start:], tail, strict=True):
      np.testing.assert_array_equal(x, y)
  # Interleaved epochs (two pipeline threads) see the same batches.
  again = ChunkedIdentitySampler(pids, P, K, seed=4)
  for step in (0, 2 * spe, 1, 2 * spe + 1, spe, 0):
    np.testing.assert_array_equal(again.global_batch(step), full[step])
  # Epochs and seeds differ.
  assert not np.array_equal(full[0], full[spe])
  other = ChunkedIdentitySampler(pids, P, K, seed=5)
  assert not np.array_equal(other.global_batch(0), full[0])
  # A caller writing into a batch does not alter the stream.
  again.global_batch(3)[:] = -1
  np.testing.assert_array_equal(again.global_batch(3), full[3])


@pytest.mark.parametrize("kind, epoch", [("pk", "images"), ("random",
                                                            "images")])
def test_process_slices_concatenate_for_every_sampler(kind, epoch):
  pids = _pids()
  args = dict(kind=kind, epoch=epoch, num_identities=P, num_instances=K,
              seed=2)
  single = build_sampler(pids, **args)
  procs = [build_sampler(pids, process_index=i, process_count=4, **args)
           for i in range(4)]
  assert all(p.local_batch_size == P * K // 4 for p in procs)
  for step in (0, 1, 5, 17, 40):
    np.testing.assert_array_equal(
        np.concatenate([p.local_batch(step) for p in procs]),
        single.global_batch(step))
  starts = [next(p.batches(7)) for p in procs]
  np.testing.assert_array_equal(np.concatenate(starts), single.global_batch(7))


# --- data.sampler = "random". ---


def test_random_epoch_is_a_permutation_prefix():
  pids = _pids()
  n = pids.size
  sampler = RandomSampler(pids, 20, seed=1)
  assert sampler.steps_per_epoch == n // 20
  assert sampler.global_batch_size == 20
  epochs = [_epoch(sampler, e).ravel() for e in range(3)]
  for shown in epochs:
    assert shown.size == (n // 20) * 20
    assert np.unique(shown).size == shown.size  # No repeats in an epoch.
    assert shown.min() >= 0 and shown.max() < n
  assert not np.array_equal(epochs[0], epochs[1])
  # Over many epochs every item is drawn (the left-out few vary).
  many = np.concatenate([_epoch(sampler, e).ravel() for e in range(30)])
  assert np.unique(many).size == n


def test_random_sampler_resumes_and_depends_on_seed():
  pids = _pids()
  sampler = build_sampler(pids, kind="random", epoch="images",
                         num_identities=3, num_instances=4, seed=8)
  assert type(sampler) is RandomSampler
  assert sampler.global_batch_size == 12
  full = list(itertools.islice(sampler.batches(0), 25))
  fresh = build_sampler(pids, kind="random", epoch="images", num_identities=3,
                       num_instances=4, seed=8)
  for x, y in zip(full[13:], itertools.islice(fresh.batches(13), 12),
                  strict=True):
    np.testing.assert_array_equal(x, y)
  other = RandomSampler(pids, 12, seed=9)
  assert not np.array_equal(other.global_batch(0), full[0])


def test_random_sampler_errors():
  with pytest.raises(ValueError, match=r"batch size.*= 200\).*exceeds.*"):
    RandomSampler(np.arange(100), 200, seed=0)
  with pytest.raises(ValueError, match=r"batch size.*= 15\).*\(2\)"):
    RandomSampler(np.arange(100), 15, seed=0, process_count=2)


# --- The factory. ---


def test_make_sampler_kinds():
  pids = _pids()
  args = dict(num_identities=P, num_instances=K, seed=0)
  assert type(build_sampler(pids, kind="pk", epoch="images",
                           **args)) is ChunkedIdentitySampler
  assert type(build_sampler(pids, kind="pk", epoch="identities",
                           **args)) is IdentitySampler
  assert type(build_sampler(pids, kind="random", epoch="images",
                           **args)) is RandomSampler
  # "random" needs no identity structure: K = 1 is fine there.
  single = build_sampler(pids, kind="random", epoch="images",
                        num_identities=8, num_instances=1, seed=0)
  assert single.global_batch_size == 8


@pytest.mark.parametrize(
    "kind, epoch, match",
    [("triplet", "images", r"data\.sampler.*\('pk', 'random'\).*'triplet'"),
     ("pk", "tracklets",
      r"data\.epoch.*\('images', 'identities'\).*'tracklets'"),
     ("random", "identities", r"data\.epoch = 'identities'.*data\.sampler"),
     ("pk", "images", r"data\.num_instances.*'random'")])
def test_make_sampler_errors_name_the_setting(kind, epoch, match):
  with pytest.raises(ValueError, match=match):
    build_sampler(_pids(), kind=kind, epoch=epoch, num_identities=P,
                 num_instances=1 if kind == "pk" and epoch == "images" else K,
                 seed=0)


def test_make_sampler_reads_the_data_section():
  data = ml_collections.ConfigDict(dict(
      sampler="pk", epoch="images", num_identities=P, num_instances=K))
  pids = _pids()
  # The call train.py makes.
  sampler = make_sampler(data, pids, 6, process_index=1, process_count=2)
  expected = ChunkedIdentitySampler(pids, P, K, seed=6)
  assert sampler.local_batch_size == P * K // 2
  np.testing.assert_array_equal(sampler.local_batch(3),
                                expected.global_batch(3)[P * K // 2:])
  data.sampler = "random"
  assert type(make_sampler(data, pids, 0)) is RandomSampler
  data.epoch = "identities"
  with pytest.raises(ValueError, match=r"data\.epoch = 'identities'"):
    make_sampler(data, pids, 0)
  data.sampler = "pk"
  assert type(make_sampler(data, pids, 0)) is IdentitySampler
  del data["epoch"]
  with pytest.raises(ValueError, match=r"lacks data\.epoch"):
    make_sampler(data, pids, 0)
  assert sampler_lib.SAMPLERS == ("pk", "random")
  assert sampler_lib.EPOCHS == ("images", "identities")
