"""``python -m napari_bfcnn``: open napari with a noisy sample and the Denoise widget docked.

Why: the README's one-line start. From here a user is one click (Run) away from
a denoised layer. ``--sample`` picks another sample (camera, astronaut, cell,
zstack), ``--no-sample`` opens an empty viewer.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

SAMPLES = ("camera", "astronaut", "cell", "zstack")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_bfcnn", description=__doc__)
    parser.add_argument("--sample", choices=SAMPLES, default="camera")
    parser.add_argument("--no-sample", action="store_true")
    parser.add_argument("files", nargs="*", help="images to open instead of a sample")
    args = parser.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-bfcnn")
    if args.files:
        viewer.open(args.files)
    elif not args.no_sample:
        viewer.open_sample("napari-bfcnn", args.sample)
    viewer.window.add_plugin_dock_widget("napari-bfcnn", "Denoise")
    napari.run()


if __name__ == "__main__":
    main()
