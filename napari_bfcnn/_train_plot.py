"""The live training plot: loss (left, log scale) and validation scores (right) against steps.

Why matplotlib in the dock: the user judges a run by its curves (still falling?
validation still rising?) while it trains, without leaving napari.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainingPlot"]

BACKGROUND = "#262930"  # napari's dark theme
FOREGROUND = "#d0d4dc"
LOSS_COLOUR = "#5aa9ff"
VAL_COLOURS = ("#ffb347", "#7ddc7d", "#ff6f91", "#c39bff")


class TrainingPlot:
    """A Qt canvas showing training loss and validation scores; ``native`` is the QWidget."""

    def __init__(self, height_px: int = 240) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(
            figsize=(4.0, height_px / 100), dpi=100, facecolor=BACKGROUND, layout="tight"
        )
        self.figure.get_layout_engine().set(pad=0.3)  # re-applied at every draw and resize
        self.native = FigureCanvasQTAgg(self.figure)
        self.native.setMinimumHeight(height_px)
        self.loss_ax = self.figure.add_subplot(111)
        self.val_ax = self.loss_ax.twinx()
        self.clear()

    def clear(self, score_label: str = "validation PSNR (dB)") -> None:
        """Forget all points (a new run)."""
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.scores: dict[str, tuple[list[int], list[float]]] = {}
        self.score_label = score_label
        self._draw()

    def add_loss(self, step: int, loss: float) -> None:
        self.steps.append(int(step))
        self.losses.append(float(loss))

    def add_scores(self, step: int, scores: dict[str, float]) -> None:
        for key, value in scores.items():
            xs, ys = self.scores.setdefault(key, ([], []))
            if xs and xs[-1] == step:  # the same validation reported twice
                ys[-1] = float(value)
            else:
                xs.append(int(step))
                ys.append(float(value))

    def redraw(self) -> None:
        self._draw()
        self.native.draw_idle()

    def _style(self, ax: Any) -> None:
        ax.set_facecolor(BACKGROUND)
        ax.tick_params(which="both", colors=FOREGROUND, labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#5a5f6a")

    def _draw(self) -> None:
        la, va = self.loss_ax, self.val_ax
        la.clear()
        va.clear()
        for ax in (la, va):
            self._style(ax)
        va.yaxis.set_label_position("right")
        va.yaxis.tick_right()
        la.set_xlabel("step", color=FOREGROUND, fontsize=8)
        la.set_ylabel("training loss (MSE)", color=LOSS_COLOUR, fontsize=8)
        va.set_ylabel(self.score_label, color=VAL_COLOURS[0], fontsize=8)
        handles = []
        if self.losses:
            la.plot(self.steps, self.losses, color=LOSS_COLOUR, lw=0.8, alpha=0.35)
            (line,) = la.plot(
                self.steps, _smooth(self.losses), color=LOSS_COLOUR, lw=1.4, label="loss"
            )
            handles.append(line)
            if min(self.losses) > 0:
                la.set_yscale("log")
        for i, (key, (xs, ys)) in enumerate(self.scores.items()):
            label = f"\u03c3 {key}" if key.replace(".", "").isdigit() else key
            (line,) = va.plot(
                xs,
                ys,
                color=VAL_COLOURS[i % len(VAL_COLOURS)],
                marker="o",
                ms=3,
                lw=1.2,
                label=label,
            )
            handles.append(line)
        if handles:
            legend = la.legend(
                handles=handles,
                loc="upper center",
                fontsize=7,
                ncol=len(handles),
                frameon=False,
                bbox_to_anchor=(0.5, 1.16),
            )
            for text in legend.get_texts():
                text.set_color(FOREGROUND)
        else:
            la.text(
                0.5,
                0.5,
                "loss and validation appear here while training",
                ha="center",
                va="center",
                color="#8a8f9a",
                fontsize=8,
                transform=la.transAxes,
            )
            la.set_xticks([])
            la.set_yticks([])
            va.set_yticks([])



def _smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average (what TensorBoard calls smoothing), for noisy batch losses."""
    out, avg = [], None
    for v in values:
        avg = v if avg is None else weight * avg + (1 - weight) * v
        out.append(avg)
    return out
