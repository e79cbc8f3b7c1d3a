r"""Throughput of the tf.data training pipelines on this machine's CPUs.

Writes a temporary Market-1501-sized training set (751 ids x 17 = 12,767
128x64 JPEGs by default) and a MARS-like set of tracklets (128x64 JPEG
frames), then times:

  image: ``pipeline.train_batches``, P16 x K4 (``data.epoch = "images"``
    sampler), augmented 256x128 batches
    (flip, pad 10 + crop, random erasing 0.5) -> images/s;
  video: ``pipeline.train_clip_batches``, P8 x K4 tracklets, 8-frame clips
    ("random" strategy), same augmentation -> frames/s (and clips/s).

The pixels come from a pool of ``reidjax.data.synthetic`` renders (smooth
pedestrians, textured backgrounds, sensor noise), so JPEG decoding costs about
what a real bounding box does; files repeat the pool under distinct names
(every read is a separate file). The first ``--warmup`` batches (graph
building, thread start-up, page cache) are excluded. Prints one JSON object:
throughput, and the process's CPU time per image / frame, which does not
depend on what else runs on a shared machine (throughput does: the 1-minute
load average before and after is reported with it). From the CPU time:
images (frames) per second per CPU core (one core busy for one second, all
the pipeline's threads counted), and the cores that feed
``--target_images_per_s`` (4,000: the one-GPU training goal of issue 15),
assuming the pipeline scales with cores (tf.data's parallel map and
interleave: autotuned, one JPEG decode per element).

  python benchmarks/input_pipeline.py [--mode both|image|video] [--steps 40]
      [--warmup 5] [--num_ids 751] [--images_per_id 17] [--tracklets 400]
      [--frames_per_tracklet 60] [--clip_length 8] [--target_images_per_s 4000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

from reidjax.data import pipeline, synthetic
from reidjax.data.sampler import build_sampler
from reidjax.data.index import ImageSplit, VideoSplit
from reidjax.data.transforms import AugmentConfig

_POOL_SIZE = 256


def _jpeg_pool(seed: int, size: tuple[int, int]) -> list[bytes]:
  """_POOL_SIZE encoded synthetic pedestrians (quality 90, like real crops)."""
  rng = np.random.default_rng(seed)
  cameras = synthetic.make_cameras(seed, 6)
  identities = [synthetic.sample_identity(rng) for _ in range(32)]
  pool = []
  for i in range(_POOL_SIZE):
    view = synthetic.sample_view(rng)
    image = synthetic.render(identities[i % 32], cameras[i % 6], view, size)
    pool.append(synthetic.encode_jpeg(image, 90))
  return pool


def _write(path: str, data: bytes) -> str:
  with open(path, "wb") as f:
    f.write(data)
  return path


def make_image_split(root: str, pool: list[bytes], num_ids: int,
                     per_id: int) -> ImageSplit:
  os.makedirs(root)
  pids = np.repeat(np.arange(num_ids), per_id).astype(np.int32)
  paths = tuple(
      _write(os.path.join(root, f"{pid:04d}_c{i % 6 + 1}_{i:06d}.jpg"),
             pool[i % len(pool)]) for i, pid in enumerate(pids))
  return ImageSplit(paths, pids, (np.arange(pids.size) % 6).astype(np.int32))


def make_video_split(root: str, pool: list[bytes], num_tracklets: int,
                     frames: int) -> VideoSplit:
  os.makedirs(root)
  tracklets = []
  for t in range(num_tracklets):
    tracklets.append(tuple(
        _write(os.path.join(root, f"{t // 2:04d}T{t:04d}F{f:03d}.jpg"),
               pool[(t * frames + f) % len(pool)]) for f in range(frames)))
  pids = (np.arange(num_tracklets) // 2).astype(np.int32)
  return VideoSplit(tuple(tracklets), pids,
                    (np.arange(num_tracklets) % 6).astype(np.int32))


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _time(batches, steps: int, warmup: int) -> tuple[float, float]:
  """(wall, CPU) seconds for ``steps`` batches after ``warmup`` untimed ones.

  CPU time (all threads of this process) is the load-independent figure: on
  a shared machine the wall time also measures the neighbours.
  """
  for _ in range(warmup):
    next(batches)
  start, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(steps):
    next(batches)
  return time.perf_counter() - start, _cpu_seconds() - cpu


def _load() -> float:
  return os.getloadavg()[0]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mode", choices=("both", "image", "video"),
                      default="both")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--num_ids", type=int, default=751)
  parser.add_argument("--images_per_id", type=int, default=17)
  parser.add_argument("--num_identities", type=int, default=16, help="P")
  parser.add_argument("--num_instances", type=int, default=4, help="K")
  parser.add_argument("--tracklets", type=int, default=400)
  parser.add_argument("--frames_per_tracklet", type=int, default=60)
  parser.add_argument("--clip_length", type=int, default=8)
  parser.add_argument("--video_identities", type=int, default=8)
  parser.add_argument("--video_instances", type=int, default=4)
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--target_images_per_s", type=float, default=4000.0,
                      help="report the CPU cores that feed this many images (frames)/s")
  args = parser.parse_args(argv)

  augment = AugmentConfig(args.height, args.width)
  result = {"cpus": os.cpu_count(), "load_1min_before": _load(),
            "output_size": [args.height, args.width], "steps": args.steps,
            "warmup_steps": args.warmup,
            "target_images_per_s": args.target_images_per_s}
  root = tempfile.mkdtemp(prefix="reidjax-input-bench-")
  try:
    pool = _jpeg_pool(0, (128, 64))
    result["mean_jpeg_bytes"] = float(np.mean([len(p) for p in pool]))
    if args.mode in ("both", "image"):
      split = make_image_split(os.path.join(root, "images"), pool,
                               args.num_ids, args.images_per_id)
      sampler = build_sampler(
          split.pids, kind="pk", epoch="images",
          num_identities=args.num_identities,
          num_instances=args.num_instances, seed=0)
      batches = pipeline.train_batches(split, sampler=sampler,
                                       augment=augment, seed=0)
      seconds, cpu = _time(batches, args.steps, args.warmup)
      del batches  # Stop its prefetching before the files go.
      images = args.steps * args.num_identities * args.num_instances
      result["image"] = {
          "train_images": len(split),
          "batch": args.num_identities * args.num_instances,
          "images_per_s": round(images / seconds, 1),
          "ms_per_batch": round(1e3 * seconds / args.steps, 2),
          "cpu_us_per_image": round(1e6 * cpu / images, 1),
          "images_per_s_per_core": round(images / cpu, 1),
          "cores_for_target": round(args.target_images_per_s * cpu / images, 2)}
    if args.mode in ("both", "video"):
      split = make_video_split(os.path.join(root, "video"), pool,
                               args.tracklets, args.frames_per_tracklet)
      sampler = build_sampler(
          split.pids, kind="pk", epoch="images",
          num_identities=args.video_identities,
          num_instances=args.video_instances, seed=0)
      batches = pipeline.train_clip_batches(
          split, sampler=sampler, clip_length=args.clip_length,
          strategy="random", augment=augment, seed=0)
      seconds, cpu = _time(batches, args.steps, args.warmup)
      del batches
      clips = args.steps * args.video_identities * args.video_instances
      frames = clips * args.clip_length
      result["video"] = {
          "tracklets": len(split), "frames": int(split.num_frames.sum()),
          "clips_per_batch": args.video_identities * args.video_instances,
          "clip_length": args.clip_length,
          "frames_per_s": round(frames / seconds, 1),
          "clips_per_s": round(clips / seconds, 1),
          "ms_per_batch": round(1e3 * seconds / args.steps, 2),
          "cpu_us_per_frame": round(1e6 * cpu / frames, 1),
          "frames_per_s_per_core": round(frames / cpu, 1),
          "cores_for_target": round(args.target_images_per_s * cpu / frames, 2)}
  finally:
    gc.collect()
    shutil.rmtree(root, ignore_errors=True)
  result["load_1min_after"] = _load()
  json.dump(result, sys.stdout, indent=1)
  print()


if __name__ == "__main__":
  main()
