"""Converts a torchvision state_dict (.pth) to an .npz that needs no torch.

Usage::

  python -m reidjax.tools.convert_weights resnet50.pth resnet50.npz
  python -m reidjax.tools.convert_weights densenet121.pth out.npz \
      --arch densenet121

The file is read with ``torch.load(weights_only=True)``, its keys are
normalised (classifier and ``num_batches_tracked`` dropped, old DenseNet
``norm.1`` keys renamed) and checked against the Flax backbone, so a bad
file fails here rather than at training time. The ``.npz`` keeps torchvision
keys and torch layouts (see ``reidjax.backbones.torchvision_import``) and
records the architecture; point ``model.backbone.pretrained`` at it.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from reidjax.backbones import torchvision_import


def convert(in_path: str, out_path: str, arch: str | None = None) -> str:
  """Writes the checked backbone tensors of ``in_path`` to ``out_path``.

  Args:
    in_path: a torchvision ``.pth`` state_dict (or an ``.npz`` to re-check).
    out_path: the ``.npz`` to write (exactly this name).
    arch: ``"resnet50"`` or ``"densenet121"``; inferred from the keys if
      None.

  Returns:
    The architecture written.

  Raises:
    torchvision_import.WeightImportError: the file does not fit ``arch``.
  """
  state_dict, file_arch = torchvision_import.read_state_dict(in_path)
  arch = torchvision_import.resolve_arch(
      arch, file_arch, state_dict, in_path)
  state_dict = torchvision_import.normalize_keys(state_dict, arch)
  torchvision_import.check_state_dict(
      state_dict, arch, torchvision_import.abstract_variables(arch),
      source=in_path)
  arrays = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  arrays[torchvision_import.ARCH_KEY] = np.array(arch)
  # A file object, so that np.savez does not append a second ".npz".
  with open(out_path, "wb") as f:
    np.savez(f, **arrays)
  return arch


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m reidjax.tools.convert_weights",
      description="Convert a torchvision ResNet-50 / DenseNet-121 state_dict "
                  "to an .npz readable without torch.")
  parser.add_argument("in_path", help="torchvision state_dict (.pth)")
  parser.add_argument("out_path", help="output .npz")
  parser.add_argument("--arch", choices=torchvision_import.ARCHS,
                      default=None,
                      help="architecture (default: inferred from the keys)")
  args = parser.parse_args(argv)
  try:
    arch = convert(args.in_path, args.out_path, args.arch)
  except (torchvision_import.WeightImportError, FileNotFoundError,
          ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  size_mb = os.path.getsize(args.out_path) / 2**20
  print(f"Wrote {args.out_path} ({arch}, {size_mb:.1f} MiB).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
